//! What people look at to judge CTCal: teacher against student noun maps, and loss curves.

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;

use super::StepLog;
use crate::calibration::{CtcalConfig, StepDraw, TeacherRule, TrainBatch, teacher_maps};
use crate::denoiser::Denoiser;
use crate::error::Result;
use crate::schedule::Schedule;
use crate::viz::{COLOURS, Series, draw_text, heatmap_row, line_plot, stack_rows};

/// One row per sample of `batch`: for each noun, its map at `teacher_level` then at
/// `student_level` (same noise), each tile normalised to its maximum, with the caption above.
/// A sample without nouns gets no row.
#[allow(clippy::too_many_arguments)]
pub fn map_preview<B, M>(
    model: &M,
    batch: &TrainBatch<B>,
    captions: &[String],
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
    for (i, (t, s)) in teacher.into_iter().zip(student).enumerate() {
        let (Some(t), Some(s)) = (t, s) else { continue };
        let [n, gh, gw] = t.dims();
        let values = |m: Tensor<B, 3>| -> Vec<f32> {
            m.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default()
        };
        let (tv, sv) = (values(t), values(s));
        let size = gh * gw;
        let tiles: Vec<Vec<f32>> = (0..n)
            .flat_map(|k| {
                [
                    tv[k * size..(k + 1) * size].to_vec(),
                    sv[k * size..(k + 1) * size].to_vec(),
                ]
            })
            .collect();
        let maps = heatmap_row(&tiles, [gh, gw], 64);
        let mut row = RgbImage::from_pixel(
            maps.width().max(200),
            maps.height() + 10,
            image::Rgb([255; 3]),
        );
        draw_text(&mut row, 0, 0, &captions[i], 1, image::Rgb([0, 0, 0]));
        image::imageops::overlay(&mut row, &maps, 0, 10);
        rows.push(row);
    }
    Ok(stack_rows(&rows))
}

/// Loss curves of a run: total, diffusion and the weighted CTCal term per step.
pub fn loss_plot(logs: &[StepLog], lambda: f64) -> RgbImage {
    let curve = |label: &str, i: usize, f: &dyn Fn(&StepLog) -> f64| Series {
        label: label.to_string(),
        points: logs.iter().map(|l| (l.step as f64, f(l))).collect(),
        colour: COLOURS[i],
    };
    let series = [
        curve("total", 0, &|l| l.loss.total),
        curve("diffusion", 1, &|l| l.loss.diffusion),
        curve("lambda ctcal", 2, &|l| lambda * l.loss.ctcal),
    ];
    line_plot("loss per step", &series, 640, 320)
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
