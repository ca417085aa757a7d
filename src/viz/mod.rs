//! Pictures: attention maps as heatmap tiles and teacher | student grids, training curves as
//! line plots (plotters), written as PNG. Text is DejaVu Sans, embedded, so no picture needs
//! system fonts.
//!
//! Used by the examples and the trainer so a person can look at what the hooks capture (and,
//! in training, at teacher against student maps and the loss curves).

mod axis;
mod canvas;
mod maps;
mod plot;
mod text;

pub use maps::{MapGridSpec, MapPair, MapRow, colour_bar, heatmap_row, heatmap_tile, map_grid};
pub use plot::{
    COLOURS, LinePlot, MIN_PLOT_SIZE, Series, YScale, ema, ema_alpha, line_plot, log_scale_fits,
};
pub use text::{TextStyle, draw_text, text_width};

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

/// The ramp colour of `v` in `[0, 1]` (clamped): the heatmaps' and the colour bar's colours.
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

/// Stacks rows vertically, left-aligned, with a 4-pixel gap (e.g. one row of samples per
/// model).
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
        image::imageops::replace(&mut img, row, 0, y0 as i64);
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
    let bytes = png_bytes(img).map_err(|e| match e {
        Error::Input(message) => Error::Input(format!("{}: {message}", path.display())),
        other => other,
    })?;
    crate::weights::write_atomic(path, &bytes)
}

/// `img` encoded as PNG (for a file, or a TensorBoard image).
pub fn png_bytes<P>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>) -> Result<Vec<u8>>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Input(format!("PNG encoding failed: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_ends_and_middle() {
        assert_eq!(colour(0.0), Rgb(RAMP[0]));
        assert_eq!(colour(-1.0), Rgb(RAMP[0]));
        assert_eq!(colour(1.0), Rgb(RAMP[4]));
        assert_eq!(colour(0.5), Rgb(RAMP[2]));
        // A quarter of the way from RAMP[0] to RAMP[1]: (68 - 9/4, 1 + 81/4, 84 + 55/4).
        assert_eq!(colour(0.0625), Rgb([66, 21, 98]));
    }

    #[test]
    fn rows_stack_with_gaps() {
        let a = RgbImage::from_pixel(3, 2, Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(5, 1, Rgb([4, 5, 6]));
        let img = stack_rows(&[a, b]);
        assert_eq!(img.dimensions(), (5, 7));
        assert_eq!(*img.get_pixel(2, 1), Rgb([1, 2, 3]));
        assert_eq!(*img.get_pixel(4, 1), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(4, 6), Rgb([4, 5, 6]));
    }
}
