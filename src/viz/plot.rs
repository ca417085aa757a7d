//! Line plots of training curves as PNG-ready images (no plotting dependency).

use image::{Rgb, RgbImage};

use super::font::{draw_text, text_width};

/// One curve: a label, its points `(x, y)` and a colour.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub colour: Rgb<u8>,
}

/// Distinct line colours (matplotlib's tab10 start).
pub const COLOURS: [Rgb<u8>; 4] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
];

const MARGIN_L: u32 = 60;
const MARGIN_R: u32 = 16;
const MARGIN_T: u32 = 28;
const MARGIN_B: u32 = 30;

fn label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if (1e-2..1e4).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// Plots `series` on shared axes (y from the data's range, padded) with a title, tick labels
/// at the corners of the axes and a legend. Non-finite points are skipped.
pub fn line_plot(title: &str, series: &[Series], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-12);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let (pw, ph) = (width - MARGIN_L - MARGIN_R, height - MARGIN_T - MARGIN_B);
    let to_px = |x: f64, y: f64| {
        let px = MARGIN_L as f64 + (x - x0) / (x1 - x0) * (pw - 1) as f64;
        let py = MARGIN_T as f64 + (1.0 - (y - y0) / (y1 - y0)) * (ph - 1) as f64;
        (px, py)
    };

    // Axes, ticks and labels.
    for x in MARGIN_L..MARGIN_L + pw {
        img.put_pixel(x, MARGIN_T + ph, black);
    }
    for y in MARGIN_T..=MARGIN_T + ph {
        img.put_pixel(MARGIN_L - 1, y, black);
    }
    draw_text(&mut img, MARGIN_L, 6, title, 2, black);
    let grey = Rgb([90, 90, 90]);
    let (ylo, yhi) = (label(y0), label(y1));
    draw_text(
        &mut img,
        MARGIN_L.saturating_sub(text_width(&yhi, 1) + 4),
        MARGIN_T,
        &yhi,
        1,
        grey,
    );
    let ybase = MARGIN_T + ph - 5;
    draw_text(
        &mut img,
        MARGIN_L.saturating_sub(text_width(&ylo, 1) + 4),
        ybase,
        &ylo,
        1,
        grey,
    );
    let xb = MARGIN_T + ph + 6;
    draw_text(&mut img, MARGIN_L, xb, &label(x0), 1, grey);
    let xhi = label(x1);
    draw_text(
        &mut img,
        MARGIN_L + pw - text_width(&xhi, 1),
        xb,
        &xhi,
        1,
        grey,
    );

    // Curves.
    for s in series {
        let pts: Vec<_> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| to_px(x, y))
            .collect();
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], s.colour);
        }
        if let [p] = pts.as_slice() {
            line(&mut img, *p, *p, s.colour);
        }
    }

    // Legend, top right.
    let mut y = MARGIN_T + 4;
    for s in series {
        let w = text_width(&s.label, 1);
        let x = MARGIN_L + pw - w - 4;
        draw_text(&mut img, x, y, &s.label, 1, s.colour);
        for dx in 0..10 {
            img.put_pixel(x - 14 + dx, y + 2, s.colour);
        }
        y += 9;
    }
    img
}

/// A 2-pixel-thick line between two points (simple DDA).
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), colour: Rgb<u8>) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for (dx, dy) in [(0.0, 0.0), (0.0, 1.0)] {
            let (px, py) = ((x + dx).round() as i64, (y + dy).round() as i64);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rising line goes from the bottom-left to the top-right corner of the plot area.
    #[test]
    fn points_land_where_expected() {
        let s = Series {
            label: "y".into(),
            points: vec![(0.0, 0.0), (10.0, 1.0)],
            colour: Rgb([255, 0, 0]),
        };
        let img = line_plot("t", &[s], 200, 120);
        let (pw, ph) = (200 - MARGIN_L - MARGIN_R, 120 - MARGIN_T - MARGIN_B);
        // y padding is 5% of the range on each side.
        let y_at = |v: f64| MARGIN_T as f64 + (1.0 - (v + 0.05) / 1.1) * (ph - 1) as f64;
        let red = Rgb([255, 0, 0]);
        assert_eq!(*img.get_pixel(MARGIN_L, y_at(0.0).round() as u32), red);
        assert_eq!(
            *img.get_pixel(MARGIN_L + pw - 1, y_at(1.0).round() as u32),
            red
        );
        // Midpoint on the line, far corner blank.
        let mid = (MARGIN_L as f64 + (pw - 1) as f64 / 2.0).round() as u32;
        assert_eq!(*img.get_pixel(mid, y_at(0.5).round() as u32), red);
        assert_eq!(
            *img.get_pixel(MARGIN_L + pw - 1, y_at(0.0).round() as u32),
            Rgb([255, 255, 255])
        );
    }
}
