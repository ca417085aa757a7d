//! Line plots of training curves and measurements, drawn with plotters: a title, named axes
//! with ticks and tick labels, a legend, a log y axis where the values span decades, and
//! optionally each curve's exponential moving average drawn over the raw points.

use std::ops::Range;

use image::{Rgb, RgbImage};
use plotters::chart::ChartBuilder;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::drawing::DrawingArea;
use plotters::element::{PathElement, Text};
use plotters::series::LineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{Color, FontFamily, FontStyle, IntoTextStyle, RGBColor};

use super::axis::{LogAxis, MAX_TICKS, linear_tick, log_tick, tick_decimals};
use super::canvas::{Canvas, PlotError, render};
use super::text::{TextStyle, text_width};
use crate::error::{Error, Result};

/// One curve: a label, its points `(x, y)` and a colour.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text (an empty label gets no legend entry).
    pub label: String,
    /// Points, in x order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub colour: Rgb<u8>,
}

/// Distinct line colours (matplotlib's tab10 start), so curves match across plots.
pub const COLOURS: [Rgb<u8>; 5] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
];

/// How the y axis places values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YScale {
    /// Logarithmic when [`log_scale_fits`] the values, else linear.
    Auto,
    /// Linear.
    Linear,
    /// Logarithmic (values at or below zero are left out).
    Log,
}

/// A plot's frame: title, axis names, size in pixels, y scale and smoothing.
#[derive(Debug, Clone)]
pub struct LinePlot {
    /// Text above the plot.
    pub title: String,
    /// Name of the x axis.
    pub x_label: String,
    /// Name of the y axis.
    pub y_label: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The y axis's scale.
    pub y_scale: YScale,
    /// `Some(alpha)`: each curve is drawn thin and light, with its exponential moving average
    /// ([`ema`], weight `alpha` on each new point) over it in full colour; `None`: curves as
    /// they are.
    pub smoothing: Option<f64>,
}

impl LinePlot {
    /// A 900 x 500 plot with a linear or log y axis as the values suit, without smoothing.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            width: 900,
            height: 500,
            y_scale: YScale::Auto,
            smoothing: None,
        }
    }

    /// The same plot at `width` x `height` pixels.
    pub fn size(self, width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            ..self
        }
    }

    /// The same plot with the y axis scaled as `y_scale` says.
    pub fn y_scale(self, y_scale: YScale) -> Self {
        Self { y_scale, ..self }
    }

    /// The same plot with each curve's moving average (weight `alpha`) over its raw points.
    pub fn smoothing(self, alpha: f64) -> Self {
        Self {
            smoothing: Some(alpha),
            ..self
        }
    }
}

/// The smallest plot, width and height in pixels: the axis names, tick labels and margins
/// take about 150 x 110 of it.
pub const MIN_PLOT_SIZE: (u32, u32) = (240, 180);

/// The exponential moving average of `points`: `s_0 = y_0`, `s_k = alpha * y_k +
/// (1 - alpha) * s_{k-1}`, at the same x (pandas' `ewm(alpha, adjust=False)`). Non-finite
/// points are skipped. Noisy per-step losses need it to show their trend.
pub fn ema(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let alpha = alpha.clamp(f64::MIN_POSITIVE, 1.0);
    let mut s: Option<f64> = None;
    points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| {
            let next = s.map_or(y, |s| alpha * y + (1.0 - alpha) * s);
            s = Some(next);
            (x, next)
        })
        .collect()
}

/// A smoothing weight for `n` points: the EMA with a span of a tenth of the points (at least
/// 2, at most 100), `alpha = 2 / (span + 1)`, so short runs stay close to the raw curve and
/// long ones show their trend.
pub fn ema_alpha(n: usize) -> f64 {
    let span = (n as f64 / 10.0).clamp(2.0, 100.0);
    2.0 / (span + 1.0)
}

/// Whether `values` want a log axis: none is negative and the positive finite ones span more
/// than a decade (max > 10 min). Zeros are allowed (a log axis leaves them out).
pub fn log_scale_fits(values: impl IntoIterator<Item = f64>) -> bool {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        if v < 0.0 {
            return false;
        }
        if v > 0.0 {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
    }
    hi > 10.0 * lo
}

/// Plots `series` on shared axes as `plot` says. Non-finite points are skipped (and points
/// at or below zero on a log axis); a series with one point is drawn as a dot.
///
/// Errors when the picture is smaller than [`MIN_PLOT_SIZE`] (no room for the axes and their
/// labels) or plotters cannot lay it out.
pub fn line_plot(plot: &LinePlot, series: &[Series]) -> Result<RgbImage> {
    let (min_w, min_h) = MIN_PLOT_SIZE;
    if plot.width < min_w || plot.height < min_h {
        return Err(Error::Input(format!(
            "plot {:?}: {}x{} pixels is smaller than {min_w}x{min_h}",
            plot.title, plot.width, plot.height
        )));
    }
    let finite = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
        points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let raw: Vec<Vec<(f64, f64)>> = series.iter().map(|s| finite(&s.points)).collect();
    let log = match plot.y_scale {
        YScale::Auto => log_scale_fits(raw.iter().flatten().map(|p| p.1)),
        YScale::Linear => false,
        YScale::Log => true,
    };
    let shown = |points: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        points.into_iter().filter(|p| !log || p.1 > 0.0).collect()
    };
    let mut curves = Vec::new();
    for (s, points) in series.iter().zip(&raw) {
        let colour = RGBColor(s.colour[0], s.colour[1], s.colour[2]);
        let label = (!s.label.is_empty()).then(|| s.label.clone());
        match plot.smoothing {
            Some(alpha) => {
                curves.push(Curve {
                    points: shown(points.clone()),
                    colour,
                    light: true,
                    label: None,
                });
                curves.push(Curve {
                    points: shown(ema(points, alpha)),
                    colour,
                    light: false,
                    label,
                });
            }
            None => curves.push(Curve {
                points: shown(points.clone()),
                colour,
                light: false,
                label,
            }),
        }
    }
    let xs = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
    let ys = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let x = padded(bounds(xs()), 0.0);
    let result = if log {
        let (lo, hi) = bounds(ys()).unwrap_or((1.0, 10.0));
        let y = LogAxis::padded(lo, hi);
        render(plot.width, plot.height, |area| {
            draw(area, plot, &curves, x.clone(), y, &log_tick)
        })
    } else {
        let y = padded(bounds(ys()), 0.05);
        let decimals = tick_decimals(y.clone());
        let tick = move |v: &f64| linear_tick(*v, decimals);
        render(plot.width, plot.height, |area| {
            draw(area, plot, &curves, x.clone(), y.clone(), &tick)
        })
    };
    result.map_err(|e| {
        Error::Input(format!(
            "plot {:?} at {}x{}: {e}",
            plot.title, plot.width, plot.height
        ))
    })
}

/// A curve as drawn: raw (thin, light) or in full colour with an optional legend entry.
struct Curve {
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    light: bool,
    label: Option<String>,
}

const TITLE: f32 = 19.0;
const LEGEND: f32 = 14.0;
/// Legend entries: a line this long, then the label.
const KEY: i32 = 24;

/// Draws the title, the legend (a centred row of entries under the title, wrapped when
/// wider than the picture, so it never covers a curve) and the chart.
fn draw<Y>(
    area: &DrawingArea<Canvas<'_>, Shift>,
    plot: &LinePlot,
    curves: &[Curve],
    x: Range<f64>,
    y: Y,
    y_tick: &dyn Fn(&f64) -> String,
) -> std::result::Result<(), PlotError>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let (width, _) = area.dim_in_pixel();
    let entries: Vec<(&str, RGBColor)> = curves
        .iter()
        .filter_map(|c| Some((c.label.as_deref()?, c.colour)))
        .collect();
    let legend = legend_rows(&entries, width as i32 - 40);
    let top = 12 + TITLE as i32 + 10 + legend.len() as i32 * 22;
    let (head, body) = area.split_vertically(top);
    let centre = (width / 2) as i32;
    let title_style = (FontFamily::SansSerif, TITLE, FontStyle::Bold)
        .into_text_style(&head)
        .pos(Pos::new(HPos::Center, VPos::Top));
    head.draw(&Text::new(plot.title.as_str(), (centre, 12), title_style))?;
    let label_style = (FontFamily::SansSerif, LEGEND)
        .into_text_style(&head)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (r, (row, row_width)) in legend.iter().enumerate() {
        let y = 12 + TITLE as i32 + 10 + r as i32 * 22 + 9;
        let mut x = centre - row_width / 2;
        for &(label, colour, w) in row {
            head.draw(&PathElement::new(
                [(x, y), (x + KEY, y)],
                colour.stroke_width(3),
            ))?;
            head.draw(&Text::new(label, (x + KEY + 6, y), label_style.clone()))?;
            x += w;
        }
    }

    let x_decimals = tick_decimals(x.clone());
    let x_tick = move |v: &f64| linear_tick(*v, x_decimals);
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .margin_top(6)
        .x_label_area_size(48)
        .y_label_area_size(76)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_labels(MAX_TICKS)
        .y_labels(MAX_TICKS)
        .x_label_formatter(&x_tick)
        .y_label_formatter(y_tick)
        .x_desc(&plot.x_label)
        .y_desc(&plot.y_label)
        .axis_desc_style((FontFamily::SansSerif, 16))
        .label_style((FontFamily::SansSerif, 13))
        .bold_line_style(RGBColor(222, 222, 222))
        .light_line_style(RGBColor(244, 244, 244))
        .max_light_lines(4)
        .axis_style(RGBColor(80, 80, 80))
        .draw()?;
    for c in curves {
        let style = if c.light {
            c.colour.mix(0.3).stroke_width(1)
        } else {
            c.colour.stroke_width(2)
        };
        let dots = if c.points.len() == 1 { 3 } else { 0 };
        chart.draw_series(LineSeries::new(c.points.iter().copied(), style).point_size(dots))?;
    }
    Ok(())
}

/// A legend entry with its width (key line, gap, label, space to the next).
type Entry<'a> = (&'a str, RGBColor, i32);

/// Legend entries in rows no wider than `max_width`, each row with its width.
fn legend_rows<'a>(entries: &[(&'a str, RGBColor)], max_width: i32) -> Vec<(Vec<Entry<'a>>, i32)> {
    let mut rows: Vec<(Vec<Entry<'a>>, i32)> = Vec::new();
    for &(label, colour) in entries {
        let w = KEY + 6 + text_width(label, TextStyle::new(LEGEND)) as i32 + 28;
        match rows.last_mut() {
            Some((row, width)) if *width + w <= max_width => {
                row.push((label, colour, w));
                *width += w;
            }
            _ => rows.push((vec![(label, colour, w)], w)),
        }
    }
    // The last entry's trailing space does not count.
    for (_, width) in &mut rows {
        *width -= 28;
    }
    rows
}

/// The smallest and largest of `values`, if any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The range of `bounds` widened by `pad` of its length on each side; a single value gets a
/// tenth of itself (or 1 at zero) each side, no values `0..1`.
fn padded(bounds: Option<(f64, f64)>, pad: f64) -> Range<f64> {
    match bounds {
        None => 0.0..1.0,
        Some((lo, hi)) if hi > lo => {
            let d = (hi - lo) * pad;
            lo - d..hi + d
        }
        Some((v, _)) => {
            let d = if v == 0.0 { 1.0 } else { v.abs() / 10.0 };
            v - d..v + d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_of_a_constant_is_the_constant() {
        let points: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 0.37)).collect();
        for alpha in [0.05, 0.3, 1.0] {
            for (s, p) in ema(&points, alpha).iter().zip(&points) {
                assert_eq!(s.0, p.0);
                assert!((s.1 - 0.37).abs() < 1e-12, "{s:?}");
            }
        }
    }

    /// A step from 0 to 1: after k points at 1 the average is 1 - (1 - alpha)^k.
    #[test]
    fn ema_of_a_step_follows_the_closed_form() {
        let alpha = 0.2;
        let points: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64, if i < 10 { 0.0 } else { 1.0 }))
            .collect();
        let s = ema(&points, alpha);
        for (i, &(_, v)) in s.iter().enumerate() {
            let want = if i < 10 {
                0.0
            } else {
                1.0 - (1.0 - alpha).powi(i as i32 - 9)
            };
            assert!((v - want).abs() < 1e-12, "{i}: {v} vs {want}");
        }
        assert!((s[10].1 - 0.2).abs() < 1e-12 && (s[11].1 - 0.36).abs() < 1e-12);
    }

    #[test]
    fn ema_skips_non_finite_points() {
        let points = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 3.0),
            (f64::INFINITY, 5.0),
        ];
        assert_eq!(ema(&points, 0.5), vec![(0.0, 1.0), (2.0, 2.0)]);
    }

    #[test]
    fn smoothing_weight_follows_the_run_length() {
        // Span 2 (12 points), 10 (100 points), capped at 100 (5000 points).
        assert!((ema_alpha(12) - 2.0 / 3.0).abs() < 1e-12);
        assert!((ema_alpha(100) - 2.0 / 11.0).abs() < 1e-12);
        assert!((ema_alpha(5000) - 2.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn log_scale_only_past_a_decade_of_positive_values() {
        assert!(!log_scale_fits([0.2, 0.5, 1.9]));
        assert!(log_scale_fits([0.2, 0.5, 2.1]));
        assert!(log_scale_fits([0.0, 0.01, 0.5, f64::NAN]));
        assert!(!log_scale_fits([-0.01, 0.01, 0.5]));
        assert!(!log_scale_fits([0.0, 0.0]));
        assert!(!log_scale_fits([f64::INFINITY, 1.0]));
    }

    fn count(img: &RgbImage, colour: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == colour).count()
    }

    /// The picture has the asked size; a smoothed curve shows in full colour and its raw points
    /// in a light tint of it (30% over white, anti-aliased); NaNs do not stop the plot.
    #[test]
    fn smoothed_plot_draws_both_curves() {
        let points = (0..50)
            .map(|i| {
                (
                    i as f64,
                    if i == 7 {
                        f64::NAN
                    } else {
                        1.0 + (i % 5) as f64
                    },
                )
            })
            .collect();
        let s = Series {
            label: "loss".into(),
            points,
            colour: COLOURS[3],
        };
        let plot = LinePlot::new("t", "step", "loss").size(640, 360);
        let smoothed = line_plot(&plot.clone().smoothing(0.2), std::slice::from_ref(&s)).unwrap();
        let plain = line_plot(&plot, &[s]).unwrap();
        assert_eq!(smoothed.dimensions(), (640, 360));
        // Red (214, 39, 40) at full strength, and light red: red ahead, green and blue high.
        let light =
            |p: &&Rgb<u8>| p[0] as u32 > p[1] as u32 + 20 && p[1] > 150 && p[1].abs_diff(p[2]) < 8;
        let (full, tint) = (
            count(&smoothed, COLOURS[3]),
            smoothed.pixels().filter(light).count(),
        );
        assert!(full > 500 && tint > 500, "{full} {tint}");
        let (plain_full, plain_tint) = (
            count(&plain, COLOURS[3]),
            plain.pixels().filter(light).count(),
        );
        assert!(
            plain_full > 500 && plain_tint < tint / 5,
            "{plain_full} {plain_tint}"
        );
    }

    #[test]
    fn too_small_a_plot_is_an_error() {
        let s = Series {
            label: "y".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0)],
            colour: COLOURS[0],
        };
        let plot = LinePlot::new("t", "x", "y");
        assert!(line_plot(&plot.clone().size(239, 400), std::slice::from_ref(&s)).is_err());
        assert!(line_plot(&plot.clone().size(400, 179), std::slice::from_ref(&s)).is_err());
        assert_eq!(
            line_plot(&plot.size(240, 180), &[s]).unwrap().dimensions(),
            (240, 180)
        );
    }
}
