//! A 3x5 pixel font (digits, lower-case letters, a few signs) for plot labels, so plots need
//! no font files.

use image::{Rgb, RgbImage};

/// Rows of a glyph, top to bottom; bit 2 is the left pixel.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        'a' => [0, 7, 1, 7, 7],
        'b' => [4, 4, 7, 5, 7],
        'c' => [0, 7, 4, 4, 7],
        'd' => [1, 1, 7, 5, 7],
        'e' => [0, 7, 7, 4, 7],
        'f' => [3, 4, 7, 4, 4],
        'g' => [0, 7, 5, 7, 1],
        'h' => [4, 4, 7, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'j' => [1, 0, 1, 1, 6],
        'k' => [4, 5, 6, 5, 5],
        'l' => [6, 2, 2, 2, 7],
        'm' => [0, 7, 7, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'p' => [0, 7, 5, 7, 4],
        'q' => [0, 7, 5, 7, 1],
        'r' => [0, 7, 4, 4, 4],
        's' => [0, 7, 6, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 7],
        'v' => [0, 5, 5, 5, 2],
        'w' => [0, 5, 5, 7, 7],
        'x' => [0, 5, 2, 2, 5],
        'y' => [0, 5, 7, 1, 7],
        'z' => [0, 7, 1, 4, 7],
        _ => [0; 5],
    }
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide;
/// upper-case letters are drawn lower-case, unknown characters as spaces. Clipped at the edges.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, colour: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c.to_ascii_lowercase());
        let left = x + i as u32 * 4 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + r as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    (text.chars().count() as u32 * 4).saturating_sub(1) * scale
}
