//! A caption the text side cannot take (a noun past the text encoder's last position) stops
//! the run with a message naming `metadata.jsonl`, the row's line and its caption.

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::data::{BadRowPolicy, ImageFolder};
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::train::{TrainConfig, Trainer};

use crate::common::Cpu;

#[test]
fn a_noun_past_the_last_text_position_names_file_and_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = std::env::temp_dir().join(format!("ctcal-captions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let data = base.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        root.join("weights/shapes-data/00000.png"),
        data.join("a.png"),
    )
    .unwrap();
    // The shapes text encoder has 16 positions; the noun of line 2 is the 24th word.
    let long = "a red circle and a blue square and a green triangle and a red circle and a \
                blue square and a green triangle and a yellow square";
    let rows = format!(
        "{{\"file_name\": \"a.png\", \"text\": \"a blue square\", \"nouns\": [\"square\"]}}\n\
         {{\"file_name\": \"a.png\", \"text\": \"{long}\", \"nouns\": [\"yellow square\"]}}\n"
    );
    let meta = data.join("metadata.jsonl");
    std::fs::write(&meta, rows).unwrap();

    let device = Default::default();
    let (pipe, mmdit) = load_shapes_pipeline::<Autodiff<Cpu>, SD3Transformer2DModel<_>>(
        &root.join("weights/shapes-mmdit"),
        &device,
    )
    .unwrap();
    let dataset = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Fail).unwrap());
    let config = TrainConfig::new(pipe.arch.ctcal())
        .with_steps(1)
        .with_batch_size(2);
    let err = Trainer::new(config)
        .output_dir(base.join("out"))
        .map_previews(false)
        .lora(pipe.arch.lora(4))
        .fit(mmdit, &pipe, dataset, &pipe.arch.schedule(), &device)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&meta.display().to_string()), "{msg}");
    assert!(
        msg.contains("line 2") && msg.contains("yellow square"),
        "{msg}"
    );
    assert!(!base.join("out/checkpoints/latest").exists());
    let _ = std::fs::remove_dir_all(&base);
}
