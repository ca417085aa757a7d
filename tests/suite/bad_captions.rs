//! A caption the text side cannot take (over-long for the shapes vocabulary, a noun past the
//! text encoder's last position) is found before the first step: it stops the run with a
//! message naming `metadata.jsonl`, the row's line and its caption, or is skipped and reported.

use std::path::Path;
use std::sync::Arc;

use burn::backend::Autodiff;
use ctcal::calibration::CtcalConfig;
use ctcal::data::{BadRowPolicy, ImageFolder};
use ctcal::mmdit::SD3Transformer2DModel;
use ctcal::nouns::{NounTokens, Nouns};
use ctcal::pipeline::shapes::load_shapes_pipeline;
use ctcal::pipeline::{StableDiffusion, StableDiffusion3};
use ctcal::train::{Event, TrainConfig, TrainInputs, Trainer};
use ctcal::unet::UNet2DConditionModel;

use crate::common::Cpu;

type A = Autodiff<Cpu>;

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

/// The CLIP pipelines: a noun the tokenizer places past its 77 positions (cut off) is refused
/// before training; in SD 3 it keeps its T5 tokens, unless the nouns are CLIP-only.
#[test]
fn a_noun_past_clips_77_tokens_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = Default::default();
    let pipe =
        StableDiffusion::<Cpu>::load(&root.join("weights/tiny-sd21"), None, &device).unwrap();
    let config = TrainConfig::new(CtcalConfig::sd21());
    let check = |caption: &str, noun: &str| {
        let nouns = Nouns::Words(vec![noun.into()]);
        TrainInputs::<A, UNet2DConditionModel<A>>::check_caption(&pipe, caption, &nouns, &config)
    };
    let long = format!("{}a cat", "a red circle and ".repeat(25));
    assert!(check(&long, "circle").is_ok());
    let msg = check(&long, "cat").unwrap_err().to_string();
    assert!(
        msg.contains("\"cat\"") && msg.contains("truncated before it"),
        "{msg}"
    );

    let sd3 = StableDiffusion3::<Cpu>::load(&root.join("weights/tiny-sd3"), None, &device).unwrap();
    let check = |caption: &str, noun: &str, tokens: NounTokens| {
        let config = TrainConfig::new(CtcalConfig::sd3().with_noun_tokens(tokens));
        let nouns = Nouns::Words(vec![noun.into()]);
        TrainInputs::<A, SD3Transformer2DModel<A>>::check_caption(&sd3, caption, &nouns, &config)
    };
    // Past CLIP's 77 tokens, within T5's 256.
    assert!(check(&long, "cat", NounTokens::ClipAndT5).is_ok());
    let msg = check(&long, "cat", NounTokens::Clip)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("truncated before it"), "{msg}");
    // Past both.
    let longer = format!("{}a cat", "a red circle and ".repeat(70));
    let msg = check(&longer, "cat", NounTokens::ClipAndT5)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("truncated before it"), "{msg}");
}
