//! What people look at to judge CTCal: teacher against student noun maps, and loss curves.

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;

use super::StepLog;
use crate::calibration::{CtcalConfig, StepDraw, TeacherRule, TrainBatch, teacher_maps};
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::nouns::{Nouns, noun_groups_at};
use crate::schedule::Schedule;
use crate::viz::{
    COLOURS, LinePlot, MapGridSpec, MapPair, MapRow, Series, TextStyle, draw_text, ema_alpha,
    line_plot, map_grid,
};

/// The smallest tile of a map preview, in pixels.
const MAP_TILE: u32 = 112;

/// One row per sample of `batch`: its caption, then for each noun its map at `teacher_level`
/// and at `student_level` (same noise), each tile divided by its own maximum, labelled with
/// the levels and the noun (the row's own noun words from `nouns` when it marks as many as the
/// sample has; else the tagger's nouns of the caption when it finds as many; else numbered).
/// A sample without nouns gets no row.
#[allow(clippy::too_many_arguments)]
pub fn map_preview<B, M>(
    model: &M,
    batch: &TrainBatch<B>,
    captions: &[String],
    nouns: &[Nouns],
    noise: Tensor<B, 4>,
    schedule: &Schedule,
    config: &CtcalConfig,
    teacher_level: f64,
    student_level: f64,
) -> Result<RgbImage>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Denoiser<B>,
    M::InnerModule: Denoiser<B::InnerBackend>,
{
    let b = batch.latents.dims()[0];
    let at = |level: f64| {
        let draw = StepDraw {
            noise: noise.clone(),
            student: vec![level; b],
            teacher: vec![level; b],
        };
        teacher_maps(model, batch, &draw, schedule, config)
    };
    let (teacher, student) = (at(teacher_level)?, at(student_level)?);
    let mut rows = Vec::new();
    let mut grid = [1, 1];
    for (i, (t, s)) in teacher.into_iter().zip(student).enumerate() {
        let (Some(t), Some(s)) = (t, s) else { continue };
        let [n, gh, gw] = t.dims();
        grid = [gh, gw];
        let values = |m: Tensor<B, 3>| -> Result<Vec<f32>> {
            m.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| Error::Input(format!("noun maps of sample {i}: {e:?}")))
        };
        let (tv, sv) = (values(t)?, values(s)?);
        let size = gh * gw;
        let caption = captions.get(i).map_or("", String::as_str);
        let pairs = noun_labels(caption, nouns.get(i), n)
            .into_iter()
            .enumerate()
            .map(|(k, noun)| MapPair {
                noun,
                teacher: tv[k * size..(k + 1) * size].to_vec(),
                student: sv[k * size..(k + 1) * size].to_vec(),
            })
            .collect();
        rows.push(MapRow {
            caption: caption.to_string(),
            pairs,
        });
    }
    let spec = MapGridSpec {
        grid,
        teacher: format!("teacher ({})", level_label(schedule, teacher_level)),
        student: format!("student ({})", level_label(schedule, student_level)),
        min_tile: MAP_TILE,
    };
    Ok(map_grid(&rows, &spec))
}

/// A noise level as the schedule counts it: a DDPM timestep `t = 700`, a flow `σ = 0.70`.
pub(crate) fn level_label(schedule: &Schedule, level: f64) -> String {
    match schedule {
        Schedule::Ddpm(_) => format!("t = {level:.0}"),
        Schedule::Flow(_) => format!("σ = {level:.2}"),
    }
}

/// Names for the `n` nouns of `caption` in order: the row's marked noun words when there are
/// `n`; else the built-in tagger's nouns when it finds exactly `n` (as it does for captions
/// without marked nouns, whose groups it made); else `noun 1` ... `noun n` (marked token
/// positions name no words).
pub(crate) fn noun_labels(caption: &str, marked: Option<&Nouns>, n: usize) -> Vec<String> {
    if let Some(Nouns::Words(words)) = marked
        && words.len() == n
    {
        return words.clone();
    }
    let words = crate::nouns::words(caption);
    // The tagger's groups over word positions (word k at position k) are word indices.
    let positions: Vec<_> = (0..words.len()).map(|k| vec![k]).collect();
    let tagged = noun_groups_at(caption, &positions).0;
    if tagged.len() == n {
        tagged
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&k| words[k].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    } else {
        (1..=n).map(|k| format!("noun {k}")).collect()
    }
}

/// Loss curves of a run (`loss.png`): total, diffusion and the weighted CTCal term per step,
/// each raw (thin, light) under its exponential moving average ([`ema_alpha`] of the run's
/// length); a log y axis when the losses span more than a decade.
pub fn loss_plot(logs: &[StepLog], lambda: f64) -> RgbImage {
    let alpha = ema_alpha(logs.len());
    let curve = |label: String, i: usize, f: &dyn Fn(&StepLog) -> f64| Series {
        label,
        points: logs.iter().map(|l| (l.step as f64, f(l))).collect(),
        colour: COLOURS[i],
    };
    let series = [
        curve("total".into(), 0, &|l| l.loss.total),
        curve("diffusion".into(), 1, &|l| l.loss.diffusion),
        curve(format!("λ·ctcal (λ = {lambda})"), 2, &|l| {
            lambda * l.loss.ctcal
        }),
    ];
    let title = format!("Training loss: per step (light), moving average α = {alpha:.2} (bold)");
    let plot = LinePlot::new(title, "step", "loss").smoothing(alpha);
    line_plot(&plot, &series).unwrap_or_else(|e| {
        // Only a picture too small for its axes fails; say so in the picture.
        let mut img = RgbImage::from_pixel(plot.width, plot.height, image::Rgb([255; 3]));
        draw_text(&mut img, 16, 16, &e.to_string(), TextStyle::new(14.0));
        img
    })
}

/// The `(teacher, student)` levels previews use: the config's fixed teacher (else 0 for DDPM,
/// sigma 0.05 for flow) against a noisy student (t = 700, sigma 0.7).
pub fn preview_levels(schedule: &Schedule, rule: TeacherRule) -> (f64, f64) {
    match (schedule, rule) {
        (Schedule::Ddpm(_), TeacherRule::FixedTimestep(t)) => (t as f64, 700.0),
        (Schedule::Ddpm(_), _) => (0.0, 700.0),
        (Schedule::Flow(_), TeacherRule::FixedSigma(s)) => (s, 0.7),
        (Schedule::Flow(s), TeacherRule::FixedTimestep(t)) => {
            (t as f64 / s.config.num_train_timesteps as f64, 0.7)
        }
        (Schedule::Flow(_), TeacherRule::BelowStudent) => (0.05, 0.7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::LossParts;
    use crate::schedule::{DdpmConfig, FlowConfig, FlowSchedule};

    fn log(step: usize, total: f64, diffusion: f64, ctcal: f64) -> StepLog {
        StepLog {
            step,
            lr: 1e-4,
            grad_norm: 0.0,
            loss: LossParts {
                total,
                diffusion,
                ctcal,
                ..Default::default()
            },
            skipped: None,
            checkpoint: None,
            wall_time: 0.0,
            step_time: 0.0,
        }
    }

    #[test]
    fn levels_are_named_as_the_schedule_counts_them() {
        let ddpm = Schedule::Ddpm(DdpmConfig::sd21().init());
        let flow = Schedule::Flow(FlowSchedule {
            config: FlowConfig::sd3_medium(),
        });
        assert_eq!(level_label(&ddpm, 700.0), "t = 700");
        assert_eq!(level_label(&flow, 0.05), "σ = 0.05");
    }

    #[test]
    fn nouns_are_named_by_the_tagger_when_it_agrees() {
        let caption = "a red square and a green triangle";
        assert_eq!(noun_labels(caption, None, 2), ["square", "triangle"]);
        assert_eq!(
            noun_labels(caption, Some(&Nouns::Unmarked), 2),
            ["square", "triangle"]
        );
        // The row's own words win (here the tagger would say "square", "triangle").
        let marked = Nouns::Words(vec!["red square".into(), "green triangle".into()]);
        assert_eq!(
            noun_labels(caption, Some(&marked), 2),
            ["red square", "green triangle"]
        );
        // The batch has another count (marked nouns): numbered, not guessed.
        assert_eq!(noun_labels(caption, None, 1), ["noun 1"]);
        assert_eq!(
            noun_labels(caption, Some(&marked), 3),
            ["noun 1", "noun 2", "noun 3"]
        );
    }

    /// The plot is 900 x 500, draws the total in its colour through a non-finite loss, and an
    /// empty history still gives the picture (empty axes).
    #[test]
    fn loss_plot_draws_every_run() {
        let logs: Vec<StepLog> = (1..=40)
            .map(|s| {
                let d = 1.0 / s as f64;
                let total = if s == 7 { f64::NAN } else { d + 0.1 * 0.02 };
                log(s, total, d, 0.02)
            })
            .collect();
        let img = loss_plot(&logs, 0.1);
        assert_eq!(img.dimensions(), (900, 500));
        let blue = COLOURS[0];
        assert!(img.pixels().filter(|p| **p == blue).count() > 200);
        assert_eq!(loss_plot(&[], 0.1).dimensions(), (900, 500));
    }
}
