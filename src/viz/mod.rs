//! Pictures: attention maps as heatmap tiles in a row (one per token), training curves as line
//! plots, written as PNG.
//!
//! Used by the examples so a person can look at what the hooks capture (and, in training, at
//! teacher against student maps).

mod font;
mod plot;

pub use font::{draw_text, text_width};
pub use plot::{COLOURS, Series, line_plot};

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// A perceptually ordered colour ramp (dark blue to yellow, after matplotlib's viridis).
const RAMP: [[u8; 3]; 5] = [
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
];

/// The ramp colour of `v` in `[0, 1]`.
pub fn colour(v: f32) -> Rgb<u8> {
    let v = v.clamp(0.0, 1.0) * (RAMP.len() - 1) as f32;
    let i = (v.floor() as usize).min(RAMP.len() - 2);
    let t = v - i as f32;
    let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * t).round() as u8;
    Rgb([
        mix(RAMP[i][0], RAMP[i + 1][0]),
        mix(RAMP[i][1], RAMP[i + 1][1]),
        mix(RAMP[i][2], RAMP[i + 1][2]),
    ])
}

/// Lays `maps` (each `grid[0] * grid[1]` values, row-major) side by side, each normalised to
/// its own maximum and scaled up to `tile` pixels high, with a 2-pixel gap.
pub fn heatmap_row(maps: &[Vec<f32>], grid: [usize; 2], tile: usize) -> RgbImage {
    let [h, w] = grid;
    let scale = (tile / h.max(1)).max(1);
    let (th, tw) = (h * scale, w * scale);
    let gap = 2;
    let width = (maps.len() * (tw + gap)).saturating_sub(gap);
    let mut img = RgbImage::from_pixel(width.max(1) as u32, th as u32, Rgb([255, 255, 255]));
    for (m, map) in maps.iter().enumerate() {
        let max = map.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
        let x0 = m * (tw + gap);
        for y in 0..th {
            for x in 0..tw {
                let v = map[(y / scale) * w + x / scale] / max;
                img.put_pixel((x0 + x) as u32, y as u32, colour(v));
            }
        }
    }
    img
}

/// Stacks rows of equal width vertically with a 4-pixel gap (e.g. teacher above student).
pub fn stack_rows(rows: &[RgbImage]) -> RgbImage {
    let width = rows.iter().map(|r| r.width()).max().unwrap_or(1);
    let gap = 4;
    let height = rows
        .iter()
        .map(|r| r.height() + gap)
        .sum::<u32>()
        .saturating_sub(gap);
    let mut img = RgbImage::from_pixel(width, height.max(1), Rgb([255, 255, 255]));
    let mut y0 = 0;
    for row in rows {
        for (x, y, p) in row.enumerate_pixels() {
            img.put_pixel(x, y0 + y, *p);
        }
        y0 += row.height() + gap;
    }
    img
}

/// Saves `img` (RGB, grey, ...) as PNG at `path` (through a temporary file and a rename).
pub fn save_png<P>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Input(format!("{}: PNG encoding failed: {e}", path.display())))?;
    crate::weights::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_ends_and_layout() {
        assert_eq!(colour(0.0), Rgb(RAMP[0]));
        assert_eq!(colour(1.0), Rgb(RAMP[4]));
        assert_eq!(colour(0.5), Rgb(RAMP[2]));
        // Two 2x3 maps at tile 4: scale 2, each 4x6, gap 2 -> 14 wide, 4 high.
        let img = heatmap_row(
            &[vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0], vec![1.0; 6]],
            [2, 3],
            4,
        );
        assert_eq!((img.width(), img.height()), (14, 4));
        assert_eq!(*img.get_pixel(4, 0), Rgb(RAMP[4]));
        assert_eq!(*img.get_pixel(0, 0), Rgb(RAMP[0]));
        assert_eq!(*img.get_pixel(6, 0), Rgb([255, 255, 255]));
    }
}
