//! The teacher rule leaves the diffusion loss alone (issue 20, corrected specification): a
//! shapes MMDiT run with `lambda_ctcal = 0` has the same loss sequence whatever the teacher rule,
//! bit for bit, and with CTCal on its first step's diffusion loss is the plain run's (same
//! student sigmas, same noise, same parameters).

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::calibration::TeacherRule;
use ctcal::data::{BadRowPolicy, ImageFolder};
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::train::{StepLog, TrainConfig, Trainer};

use crate::common::Cpu;

fn run(out: &Path, teacher: TeacherRule, lambda: f64) -> Vec<StepLog> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = Default::default();
    let model_dir = root.join("weights/shapes-mmdit");
    let (pipe, mmdit) =
        load_shapes_pipeline::<Autodiff<Cpu>, SD3Transformer2DModel<_>>(&model_dir, &device)
            .unwrap();
    let meta = root.join("weights/shapes-data/metadata.jsonl");
    let data = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Fail).unwrap());
    let ctcal = pipe
        .arch
        .ctcal()
        .with_teacher(teacher)
        .with_lambda_ctcal(lambda);
    let config = TrainConfig::new(ctcal).with_steps(3).with_batch_size(2);
    Trainer::new(config)
        .output_dir(out)
        .lora(pipe.arch.lora(4))
        .fit(mmdit, &pipe, data, &pipe.arch.schedule(), &device)
        .unwrap()
        .logs
}

#[test]
fn lambda_zero_runs_are_plain_fine_tunes_whatever_the_teacher_rule() {
    let base = std::env::temp_dir().join(format!("ctcal-levels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let below = run(&base.join("below"), TeacherRule::BelowStudent, 0.0);
    let fixed = run(&base.join("fixed"), TeacherRule::FixedSigma(0.05), 0.0);
    let with_ctcal = run(&base.join("ctcal"), TeacherRule::BelowStudent, 1.0);
    let totals = |logs: &[StepLog]| logs.iter().map(|l| l.loss.total).collect::<Vec<_>>();
    assert_eq!(below.len(), 3);
    assert_eq!(totals(&below), totals(&fixed));
    assert!(below.iter().all(|l| l.loss.ctcal == 0.0));
    // CTCal on: same diffusion loss at the first step, and a CTCal term of its own.
    assert_eq!(with_ctcal[0].loss.diffusion, below[0].loss.diffusion);
    assert!(with_ctcal[0].loss.ctcal > 0.0);
    let _ = std::fs::remove_dir_all(&base);
}
