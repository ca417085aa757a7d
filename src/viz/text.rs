//! Text in pictures: DejaVu Sans (matplotlib's default face), embedded through the `dejavu`
//! crate and drawn with `ab_glyph`, so pictures need no system fonts and no fontconfig.
//!
//! Glyphs are placed at their sub-pixel pen positions with their side bearings and kerning;
//! plotters' own `ab_glyph` drawing drops the bearings (uneven letter spacing), so plots draw
//! their text through [`raster`] as well (see `canvas.rs`), while plotters keeps measuring
//! legend boxes with the same face, registered by [`register_with_plotters`].

use std::sync::{LazyLock, Once};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

/// DejaVu Sans Book.
static REGULAR: LazyLock<FontRef<'static>> = LazyLock::new(|| parse(dejavu::sans::regular()));
/// DejaVu Sans Bold.
static BOLD: LazyLock<FontRef<'static>> = LazyLock::new(|| parse(dejavu::sans::bold()));

fn parse(bytes: &'static [u8]) -> FontRef<'static> {
    // The bytes are the font files the `dejavu` crate ships; `faces_parse` tests them.
    FontRef::try_from_slice(bytes).expect("the embedded DejaVu Sans parses")
}

/// The size, weight and colour of a line of text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStyle {
    /// Height of the line box (ascent to descent) in pixels.
    pub size: f32,
    /// DejaVu Sans Bold instead of Book.
    pub bold: bool,
    /// Ink colour.
    pub colour: Rgb<u8>,
}

impl TextStyle {
    /// Black regular text `size` pixels high.
    pub fn new(size: f32) -> Self {
        Self {
            size,
            bold: false,
            colour: Rgb([0, 0, 0]),
        }
    }

    /// The same, in bold.
    pub fn bold(self) -> Self {
        Self { bold: true, ..self }
    }

    /// The same, in `colour`.
    pub fn colour(self, colour: Rgb<u8>) -> Self {
        Self { colour, ..self }
    }
}

fn face(bold: bool) -> &'static FontRef<'static> {
    if bold { &BOLD } else { &REGULAR }
}

/// Width in pixels of `text` on one line (pen advances and kerning, rounded up).
pub fn text_width(text: &str, style: TextStyle) -> u32 {
    let font = face(style.bold).as_scaled(PxScale::from(style.size));
    let mut width = 0.0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        prev = Some(id);
    }
    width.ceil().max(0.0) as u32
}

/// Lays `text` out on one line whose box (`text_width` wide, `size` high, baseline at the
/// ascent) has its top-left corner at the origin, and calls `put(x, y, coverage)` for each
/// pixel a glyph covers (coverage in `(0, 1]`; pixels may lie outside the box by a bearing).
pub(crate) fn raster(text: &str, size: f32, bold: bool, mut put: impl FnMut(i32, i32, f32)) {
    let font = face(bold);
    let scaled = font.as_scaled(PxScale::from(size));
    let baseline = scaled.ascent();
    let mut pen = 0.0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            pen += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(size, point(pen, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            let (x0, y0) = (bounds.min.x as i32, bounds.min.y as i32);
            outline.draw(|x, y, coverage| {
                if coverage > 0.0 {
                    put(x0 + x as i32, y0 + y as i32, coverage.min(1.0));
                }
            });
        }
        pen += scaled.h_advance(id);
        prev = Some(id);
    }
}

/// Draws `text` onto `img` with the top-left corner of its line box at `(x, y)`, blending the
/// ink into the picture by glyph coverage; what falls outside the picture is dropped.
pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, style: TextStyle) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    raster(text, style.size, style.bold, |dx, dy, a| {
        let (px, py) = (x + dx, y + dy);
        if (0..w).contains(&px) && (0..h).contains(&py) {
            let p = img.get_pixel_mut(px as u32, py as u32);
            *p = blend(*p, style.colour, a);
        }
    });
}

/// `under` covered by `ink` at opacity `a`.
pub(crate) fn blend(under: Rgb<u8>, ink: Rgb<u8>, a: f32) -> Rgb<u8> {
    let mix = |u: u8, i: u8| (u as f32 + (i as f32 - u as f32) * a).round() as u8;
    Rgb([
        mix(under[0], ink[0]),
        mix(under[1], ink[1]),
        mix(under[2], ink[2]),
    ])
}

/// Makes the embedded face plotters' `sans-serif` (regular and bold), which plotters measures
/// legend entries with; once per process.
pub(crate) fn register_with_plotters() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use plotters::style::{FontStyle, register_font};
        // Both can fail only on bytes ab_glyph cannot parse, and `faces_parse` tests that
        // these parse (plotters' error type carries nothing to report).
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faces_parse() {
        for bytes in [dejavu::sans::regular(), dejavu::sans::bold()] {
            assert!(FontRef::try_from_slice(bytes).is_ok());
        }
    }

    /// DejaVu Sans's advance widths at 2048 units per em: "0" is 1303 units, and a line box
    /// `size` high is `size / (ascent - descent) = size / 2384` pixels per unit.
    #[test]
    fn width_is_the_sum_of_advances() {
        let style = TextStyle::new(23.84);
        // 1303 * 23.84 / 2384 = 13.03 pixels per digit; ten digits (no kerning between them).
        assert_eq!(text_width("0000000000", style), 131);
        assert_eq!(text_width("", style), 0);
        assert!(text_width("00", style.bold()) > text_width("00", style));
    }

    /// Ink stays inside the line box (up to a pixel of bearing), starts near its left edge and
    /// reaches down past the baseline for a descender.
    #[test]
    fn ink_lands_in_the_line_box() {
        let style = TextStyle::new(20.0);
        let mut img = RgbImage::from_pixel(120, 40, Rgb([255, 255, 255]));
        draw_text(&mut img, 10, 10, "Hgy", style);
        let inked: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(!inked.is_empty());
        let w = text_width("Hgy", style);
        let (x0, x1) = (
            inked.iter().map(|p| p.0).min(),
            inked.iter().map(|p| p.0).max(),
        );
        let (y0, y1) = (
            inked.iter().map(|p| p.1).min(),
            inked.iter().map(|p| p.1).max(),
        );
        assert!(x0 >= Some(10) && x0 <= Some(13), "{x0:?}");
        assert!(x1 <= Some(10 + w), "{x1:?} {w}");
        assert!(y0 >= Some(10) && y1 <= Some(30), "{y0:?} {y1:?}");
        // "g" and "y" descend below the baseline (ascent 1901 of 2384 units: y = 10 + 15.9).
        assert!(y1 > Some(27), "{y1:?}");
    }

    #[test]
    fn blending_is_linear_in_coverage() {
        let (white, black) = (Rgb([255, 255, 255]), Rgb([0, 0, 0]));
        assert_eq!(blend(white, black, 1.0), black);
        assert_eq!(blend(white, black, 0.0), white);
        assert_eq!(blend(white, Rgb([255, 0, 55]), 0.5), Rgb([255, 128, 155]));
    }
}
