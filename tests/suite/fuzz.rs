//! A bounded fuzz run of the readers of user files: weights and checkpoints (safetensors),
//! configs and checkpoint states (JSON), tokenizer files, `metadata.jsonl` and images. Each
//! reader gets a few hundred seeded mutations of a real file (bit flips, bytes set to
//! boundary values, 8-byte lengths overwritten, truncations, deleted and repeated ranges,
//! numbers replaced by extreme ones) and must answer every one with `Ok` or an error, never a
//! panic (a signal or an abort would end the test binary, failing it too).
//!
//! With `CTCAL_FUZZ_CASES=N` each reader gets N inputs instead of the default; a failing
//! input is kept under the system temp folder and its path printed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::backend::Autodiff;
use ctcal::calibration::{CtcalConfig, MapAutoEncoder, MapAutoEncoderConfig};
use ctcal::data::{BadRowPolicy, DataCursor, ImageFolder, Metadata, load_image};
use ctcal::mmdit::SD3Transformer2DConfig;
use ctcal::schedule::{DdimConfig, FlowEulerConfig};
use ctcal::text::{ClipTextConfig, ClipTokenizer, T5Tokenizer};
use ctcal::train::{CheckpointState, TrainConfig, Trained, load_params, read_state, save_params};
use ctcal::unet::UNet2DConditionConfig;
use ctcal::vae::AutoencoderKLConfig;
use ctcal::weights::{CheckpointFiles, TensorFile, load_files};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::Cpu;

/// Inputs per reader (each a mutation of the reader's seed file).
const CASES: usize = 400;

fn cases() -> usize {
    std::env::var("CTCAL_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES)
}

/// Applies 1 to 4 random edits to `seed`; offsets favour the first 512 bytes, where the
/// headers and lengths are.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    const BYTES: [u8; 10] = [0, 0xff, 0x7f, 0x80, b'9', b'-', b'"', b'{', b'[', b'\n'];
    const WORDS: [u64; 5] = [u64::MAX, 1 << 40, i64::MAX as u64, 0, 0xffff_ffff];
    const NUMBERS: [&str; 6] = ["1e309", "-1", "18446744073709551616", "0", "NaN", "1e-320"];
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let hot = b.len().min(512);
        let at = if rng.random_bool(0.5) {
            rng.random_range(0..hot)
        } else {
            rng.random_range(0..b.len())
        };
        match rng.random_range(0..7) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = BYTES[rng.random_range(0..BYTES.len())],
            2 => b.truncate(at),
            3 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            4 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let copy = b[at..end].to_vec();
                let to = rng.random_range(0..=b.len());
                b.splice(to..to, copy);
            }
            5 => {
                let word = WORDS[rng.random_range(0..WORDS.len())].to_le_bytes();
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&word[..end - at]);
            }
            _ => {
                // A run of digits replaced by an extreme number (text files).
                if let Some(start) = (at..b.len()).find(|&i| b[i].is_ascii_digit()) {
                    let end = (start..b.len())
                        .find(|&i| !b[i].is_ascii_digit())
                        .unwrap_or(b.len());
                    let n = NUMBERS[rng.random_range(0..NUMBERS.len())].as_bytes();
                    b.splice(start..end, n.iter().copied());
                }
            }
        }
    }
    b
}

/// Writes `cases()` mutations of `seed` to `target` and runs `read` on each; returns the
/// number of inputs tried and the panics (input kept, message).
fn fuzz(name: &str, seed: &[u8], target: &Path, read: impl Fn(&Path)) -> (usize, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(name.bytes().map(u64::from).sum());
    let mut panics = Vec::new();
    let n = cases();
    for case in 0..n {
        let input = mutate(&mut rng, seed);
        std::fs::write(target, &input).unwrap();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| read(target))) {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("ctcal-fuzz-{name}-{case}"));
            let _ = std::fs::write(&kept, &input);
            panics.push(format!(
                "{name} case {case} ({}): {message}",
                kept.display()
            ));
        }
    }
    std::fs::write(target, seed).unwrap();
    (n, panics)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn readers_of_user_files_never_panic_on_mutated_bytes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("ctcal-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let file = |name: &str| work.join(name);
    let device = Default::default();
    type Ad = Autodiff<Cpu>;
    let mut tried = 0;
    let mut panics = Vec::new();
    let mut run = |(n, p): (usize, Vec<String>)| {
        tried += n;
        panics.extend(p);
    };

    // Safetensors: a checkpoint's parameters, read raw and into a module.
    let ae: MapAutoEncoder<Ad> = MapAutoEncoderConfig::new().init(&device);
    save_params(&ae, &file("params.safetensors"), |_, _| true).unwrap();
    let seed = std::fs::read(file("params.safetensors")).unwrap();
    run(fuzz(
        "safetensors",
        &seed,
        &file("params.safetensors"),
        |p| {
            let _ = TensorFile::read(p);
            let fresh: MapAutoEncoder<Ad> = MapAutoEncoderConfig::new().init(&Default::default());
            let _ = load_files(fresh, &CheckpointFiles::single(p));
            let fresh: MapAutoEncoder<Ad> = MapAutoEncoderConfig::new().init(&Default::default());
            let _ = load_params(fresh, p, |_, _| true);
        },
    ));

    // diffusers and transformers configs.
    let json = |path: &str| std::fs::read(root.join(path)).unwrap();
    run(fuzz(
        "unet-config",
        &json("weights/tiny-sd21/unet/config.json"),
        &file("unet.json"),
        |p| {
            let _ = UNet2DConditionConfig::from_diffusers_json(p);
        },
    ));
    run(fuzz(
        "mmdit-config",
        &json("weights/tiny-sd3/transformer/config.json"),
        &file("mmdit.json"),
        |p| {
            let _ = SD3Transformer2DConfig::from_diffusers_json(p);
        },
    ));
    run(fuzz(
        "vae-config",
        &json("weights/tiny-sd21/vae/config.json"),
        &file("vae.json"),
        |p| {
            let _ = AutoencoderKLConfig::from_diffusers_json(p);
        },
    ));
    run(fuzz(
        "ddim-config",
        &json("weights/tiny-sd21/scheduler/scheduler_config.json"),
        &file("ddim.json"),
        |p| {
            let _ = DdimConfig::from_diffusers_json(p);
        },
    ));
    run(fuzz(
        "flow-config",
        &json("weights/tiny-sd3/scheduler/scheduler_config.json"),
        &file("flow.json"),
        |p| {
            let _ = FlowEulerConfig::from_diffusers_json(p);
        },
    ));
    run(fuzz(
        "clip-config",
        &json("weights/tiny-sd21/text_encoder/config.json"),
        &file("clip.json"),
        |p| {
            let _ = ClipTextConfig::from_transformers_json(p);
        },
    ));

    // Tokenizer files, in a copy of the tokenizer folder.
    let clip = file("clip-tokenizer");
    copy_dir(&root.join("weights/tiny-sd21/tokenizer"), &clip);
    let seed = json("weights/tiny-sd21/tokenizer/tokenizer_config.json");
    run(fuzz(
        "clip-tokenizer-config",
        &seed,
        &clip.join("tokenizer_config.json"),
        |p| {
            let _ = ClipTokenizer::from_folder(p.parent().unwrap());
        },
    ));
    let seed = json("weights/tiny-sd21/tokenizer/merges.txt");
    run(fuzz("clip-merges", &seed, &clip.join("merges.txt"), |p| {
        let _ = ClipTokenizer::from_folder(p.parent().unwrap());
    }));
    let t5 = file("t5-tokenizer");
    copy_dir(&root.join("weights/tiny-sd3/tokenizer_3"), &t5);
    let seed = json("weights/tiny-sd3/tokenizer_3/tokenizer.json");
    run(fuzz(
        "t5-tokenizer",
        &seed,
        &t5.join("tokenizer.json"),
        |p| {
            let _ = T5Tokenizer::from_folder(p.parent().unwrap());
        },
    ));

    // A checkpoint's state.json.
    let state = CheckpointState {
        step: 20,
        cursor: DataCursor {
            seed: 0,
            epoch: 1,
            position: 4,
            len: 66,
        },
        config: TrainConfig::new(CtcalConfig::sd21()),
        trained: Trained::Lora,
        data: None,
    };
    let ckpt = file("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    let seed = serde_json::to_vec_pretty(&state).unwrap();
    run(fuzz("state", &seed, &ckpt.join("state.json"), |p| {
        let _ = read_state(p.parent().unwrap());
    }));

    // metadata.jsonl over four shapes images, and one of the images.
    let data = file("data");
    std::fs::create_dir_all(&data).unwrap();
    let shapes = root.join("weights/shapes-data");
    let rows: Vec<&str> = include_str!("../../weights/shapes-data/metadata.jsonl")
        .lines()
        .take(4)
        .collect();
    for i in 0..4 {
        let name = format!("{i:05}.png");
        std::fs::copy(shapes.join(&name), data.join(&name)).unwrap();
    }
    let seed = rows.join("\n").into_bytes();
    run(fuzz("metadata", &seed, &data.join("metadata.jsonl"), |p| {
        let _ = Metadata::read(p, BadRowPolicy::Skip);
        let _ = Metadata::read(p, BadRowPolicy::Fail);
        let _ = ImageFolder::open(p, 8, BadRowPolicy::Skip);
    }));
    let seed = std::fs::read(shapes.join("00000.png")).unwrap();
    run(fuzz("png", &seed, &data.join("00001.png"), |p| {
        let _ = load_image(p, 8);
    }));

    let _ = std::fs::remove_dir_all(&work);
    println!("fuzz: {tried} inputs, {} panics", panics.len());
    assert!(
        panics.is_empty(),
        "{} of {tried} inputs panicked:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

/// The mutator itself: seeded, it changes its input and reaches every kind of edit.
#[test]
fn the_mutator_is_seeded_and_changes_its_input() {
    let seed = br#"{"a": 12, "b": [1, 2, 3], "c": "text"}"#.repeat(20);
    let draw = |s| {
        let mut rng = StdRng::seed_from_u64(s);
        (0..200)
            .map(|_| mutate(&mut rng, &seed))
            .collect::<Vec<_>>()
    };
    let (a, b) = (draw(1), draw(1));
    assert_eq!(a, b);
    assert!(a.iter().filter(|m| m.as_slice() == seed.as_slice()).count() < 10);
    assert!(a.iter().any(|m| m.len() < seed.len()));
    assert!(a.iter().any(|m| m.len() > seed.len()));
    assert!(a.iter().any(|m| m.windows(5).any(|w| w == b"1e309")));
}
