//! A caption the text side cannot take (over-long for the shapes vocabulary, a noun past the
//! text encoder's last position) is found before the first step: it stops the run with a
//! message naming `metadata.jsonl`, the row's line and its caption, or is skipped and reported.

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::data::{BadRowPolicy, ImageFolder};
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::nouns::Nouns;
use ctcal::pipeline::StableDiffusion;
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::train::{Event, TrainConfig, TrainInputs, Trainer};
use ctcal::unet::UNet2DConditionModel;

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
    let err = Trainer::new(config.clone())
        .output_dir(base.join("out"))
        .map_previews(false)
        .lora(pipe.arch.lora(4))
        .fit(
            mmdit.clone(),
            &pipe,
            dataset,
            &pipe.arch.schedule(),
            &device,
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:2: a.png", meta.display())),
        "{msg}"
    );
    assert!(msg.contains("29 tokens"), "{msg}");
    // Found before the first step: nothing was written.
    assert!(!base.join("out").exists());

    // Skipping bad rows: the row is reported and the run trains on the others.
    let dataset = Arc::new(ImageFolder::open(&meta, 32, BadRowPolicy::Skip).unwrap());
    let mut skipped = Vec::new();
    let mut samples = 0;
    Trainer::new(config.with_batch_size(1))
        .output_dir(base.join("out"))
        .map_previews(false)
        .lora(pipe.arch.lora(4))
        .listen(|event| match event {
            Event::Skipped(rows) => skipped.push(rows.to_string()),
            Event::Started { samples: n, .. } => samples = *n,
            _ => {}
        })
        .fit(mmdit, &pipe, dataset, &pipe.arch.schedule(), &device)
        .unwrap();
    assert_eq!(samples, 1);
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].contains(&format!("{}:2:", meta.display())),
        "{skipped:?}"
    );
    // ... and recorded with the first step in metrics.jsonl.
    let metrics = std::fs::read_to_string(base.join("out/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let logged = first["skipped"].as_str().unwrap();
    assert!(
        logged.starts_with("before training: skipped 1 row"),
        "{logged}"
    );
    assert!(
        logged.contains(&format!("{}:2: a.png", meta.display())),
        "{logged}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// The CLIP pipelines: a noun the tokenizer places past its 77 positions (cut off, and in SD 3
/// the joint sequence's T5 part would be supervised instead) is refused before training.
#[test]
fn a_noun_past_clips_77_tokens_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = Default::default();
    let pipe =
        StableDiffusion::<Cpu>::load(&root.join("weights/tiny-sd21"), None, &device).unwrap();
    let check = |caption: &str, noun: &str| {
        <StableDiffusion<Cpu> as TrainInputs<Autodiff<Cpu>, UNet2DConditionModel<Autodiff<Cpu>>>>::check_caption(
            &pipe,
            caption,
            &Nouns::Words(vec![noun.into()]),
        )
    };
    let long = format!("{}a cat", "a red circle and ".repeat(25));
    assert!(check(&long, "circle").is_ok());
    let msg = check(&long, "cat").unwrap_err().to_string();
    assert!(
        msg.contains("\"cat\"") && msg.contains("truncated before it"),
        "{msg}"
    );
}
