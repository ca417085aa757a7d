use super::*;
use crate::data::test_util::TempDir;
use burn::tensor::Tensor;
use std::collections::BTreeMap;
use std::f32::consts::PI;

fn config() -> ShapesConfig {
    ShapesConfig::new()
}

#[test]
fn same_seed_same_scenes_other_seed_other_scenes() {
    let c = config();
    let a = c.generate(Split::Train, 50, 7).unwrap();
    assert_eq!(a, c.generate(Split::Train, 50, 7).unwrap());
    assert_ne!(a, c.generate(Split::Train, 50, 8).unwrap());
    assert_ne!(a, c.generate(Split::HeldOut, 50, 7).unwrap());
}

#[test]
fn held_out_combinations_only_in_the_held_out_split() {
    let c = config();
    let held = |s: &Scene| {
        s.claim
            .combinations()
            .iter()
            .any(|x| c.held_out.contains(x))
    };
    let train = c.generate(Split::Train, 400, 1).unwrap();
    let test = c.generate(Split::HeldOut, 400, 1).unwrap();
    assert!(train.iter().all(|s| !held(s)));
    assert!(test.iter().all(held));
    // Every template occurs in both splits.
    for split in [&train, &test] {
        for cat in ["shape", "colour_binding", "counting", "spatial"] {
            let n = split.iter().filter(|s| s.claim.category() == cat).count();
            assert!(n > 50, "{cat}: {n} of 400");
        }
    }
}

#[test]
fn captions_name_their_objects() {
    let scenes = config().generate(Split::Train, 300, 2).unwrap();
    for s in &scenes {
        let caption = s.caption();
        let words: Vec<&str> = caption.split(' ').collect();
        for noun in s.claim.nouns() {
            assert_eq!(words.iter().filter(|w| **w == noun).count(), 1, "{caption}");
        }
        for (noun, objects) in s.noun_objects() {
            assert!(!objects.is_empty(), "{caption}: no object for {noun}");
            for &o in &objects {
                assert!(noun.starts_with(s.objects[o].shape.word()));
            }
        }
        match s.claim {
            Claim::Count { count, .. } => assert_eq!(s.objects.len(), count),
            Claim::Spatial { relation, .. } => {
                assert!(relation.holds(s.objects[0].center, s.objects[1].center))
            }
            Claim::Single { .. } => assert_eq!(s.objects.len(), 1),
            Claim::Pair { .. } => assert_eq!(s.objects.len(), 2),
        }
    }
    let caption = Claim::Spatial {
        first: (Colour::Red, Shape::Circle),
        relation: Relation::LeftOf,
        second: (Colour::Blue, Shape::Square),
    }
    .caption();
    assert_eq!(caption, "a red circle to the left of a blue square");
    let count = Claim::Count {
        count: 2,
        colour: Colour::Yellow,
        shape: Shape::Triangle,
    };
    assert_eq!(count.caption(), "two yellow triangles");
    assert_eq!(count.nouns(), vec!["triangles".to_string()]);
}

/// Rendered areas against the closed forms (circle pi r^2, square 4 r^2, triangle 2 r^2), and
/// pure fill colour at the centre.
#[test]
fn rendered_areas_match_closed_forms() {
    for (shape, area) in [
        (Shape::Circle, PI),
        (Shape::Square, 4.0),
        (Shape::Triangle, 2.0),
    ] {
        for r in [4.0f32, 5.5, 7.0] {
            let o = Object {
                shape,
                colour: Colour::Green,
                center: [16.3, 15.8],
                radius: r,
            };
            let scene = Scene {
                claim: Claim::Single {
                    colour: Colour::Green,
                    shape,
                },
                objects: vec![o],
            };
            let img = render(&scene, 32);
            let covered: f32 = img.coverage[0].iter().sum();
            let exact = area * r * r;
            // 4x4 supersampling: the error is a fraction of the perimeter's pixels.
            assert!(
                (covered - exact).abs() < 0.02 * exact + 1.0,
                "{shape:?} r {r}: {covered} vs {exact}"
            );
            let centre = (18 * 32 + 16) * 3; // a pixel well inside every shape
            assert_eq!(&img.rgb[centre..centre + 3], &Colour::Green.rgb());
            assert_eq!(&img.rgb[0..3], &BACKGROUND);
        }
    }
}

/// The detector against the generator's own images: the accuracy the README reports.
#[test]
fn detector_on_ground_truth() {
    let c = config();
    let det = Detector::default();
    let mut total = 0usize;
    let mut claims_ok = 0usize;
    let mut objects = 0usize;
    let mut objects_ok = 0usize;
    for split in [Split::Train, Split::HeldOut] {
        for s in c.generate(split, 300, 3).unwrap() {
            let img = render(&s, c.size);
            let found = det.detect(&img.rgb, c.size);
            total += 1;
            claims_ok += satisfies(&s.claim, &found) as usize;
            for o in &s.objects {
                objects += 1;
                objects_ok += found.iter().any(|d| {
                    d.colour == o.colour
                        && d.shape == o.shape
                        && (d.center[0] - o.center[0]).abs() < 1.0
                        && (d.center[1] - o.center[1]).abs() < 1.0
                }) as usize;
            }
        }
    }
    let claim_acc = claims_ok as f64 / total as f64;
    let object_acc = objects_ok as f64 / objects as f64;
    println!(
        "detector on ground truth: claims {claim_acc:.4} ({total}), objects {object_acc:.4} ({objects})"
    );
    assert!(claim_acc >= 0.99, "claims {claim_acc}");
    assert!(object_acc >= 0.99, "objects {object_acc}");
}

/// The checks reject wrong captions: swapped colours, wrong counts, reversed relations.
#[test]
fn detector_rejects_wrong_claims() {
    let c = config();
    let det = Detector::default();
    let (mut n, mut rejected) = (0usize, 0usize);
    for s in c.generate(Split::Train, 300, 4).unwrap() {
        let found = det.detect(&render(&s, c.size).rgb, c.size);
        let wrong = match s.claim {
            Claim::Pair { objects: [a, b] } if a.0 != b.0 => Claim::Pair {
                objects: [(b.0, a.1), (a.0, b.1)],
            },
            Claim::Count {
                count,
                colour,
                shape,
            } => Claim::Count {
                count: 5 - count,
                colour,
                shape,
            },
            Claim::Spatial {
                first,
                relation,
                second,
            } => Claim::Spatial {
                first: second,
                relation,
                second: first,
            },
            _ => continue,
        };
        n += 1;
        rejected += !satisfies(&wrong, &found) as usize;
    }
    assert!(n > 150);
    assert!(rejected as f64 / n as f64 >= 0.97, "{rejected} of {n}");
}

#[test]
fn agreement_closed_forms() {
    // 8x8 mask, left half covered; 4x4 map.
    let mask: Vec<f32> = (0..64).map(|i| ((i % 8) < 4) as u8 as f32).collect();
    let uniform = vec![1.0f32; 16];
    let a = agreement(&uniform, [4, 4], &mask, [8, 8], 0.5).unwrap();
    assert!((a.mass_inside - 0.5).abs() < 1e-6);
    assert!((a.iou - 0.5).abs() < 1e-6); // everything selected, half of it the mask
    let on: Vec<f32> = (0..16).map(|i| ((i % 4) < 2) as u8 as f32 * 3.0).collect();
    let a = agreement(&on, [4, 4], &mask, [8, 8], 0.5).unwrap();
    assert_eq!((a.mass_inside, a.iou), (1.0, 1.0));
    let off: Vec<f32> = on.iter().map(|v| 3.0 - v).collect();
    let a = agreement(&off, [4, 4], &mask, [8, 8], 0.5).unwrap();
    assert_eq!((a.mass_inside, a.iou), (0.0, 0.0));
    // A mask cell covered a quarter counts a quarter of the mass, and not in the IoU.
    let mut quarter = vec![0.0f32; 4];
    quarter[0] = 1.0;
    let a = agreement(&[2.0], [1, 1], &quarter, [2, 2], 0.5).unwrap();
    assert!((a.mass_inside - 0.25).abs() < 1e-6);
    assert_eq!(a.iou, 0.0);
    let err = agreement(&uniform, [4, 4], &mask[..60], [8, 8], 0.5).unwrap_err();
    assert!(err.to_string().contains("60"), "{err}");
    let err = agreement(&[1.0; 9], [3, 3], &mask, [8, 8], 0.5).unwrap_err();
    assert!(err.to_string().contains("8x8"), "{err}");
}

#[test]
fn dataset_round_trip_and_image_folder() {
    let dir = TempDir::new("shapes");
    let c = config();
    let scenes = c.generate(Split::HeldOut, 6, 5).unwrap();
    let root = dir.path("data");
    let rows = write_dataset(&root, &scenes, c.size).unwrap();
    assert_eq!(read_rows(&root).unwrap(), rows);
    // The trainer's image folder reads it (extra fields ignored), nouns included.
    let folder = crate::data::ImageFolder::open(
        &root.join("metadata.jsonl"),
        32,
        crate::data::BadRowPolicy::Fail,
    )
    .unwrap();
    assert_eq!(crate::data::Dataset::len(&folder), 6);
    // The mask image marks object k with k + 1 exactly where it covers half a pixel or more.
    let img = render(&scenes[0], c.size);
    let mask = image::open(root.join(&rows[0].mask)).unwrap().to_luma8();
    for k in 0..scenes[0].objects.len() {
        let from_png: Vec<bool> = mask.pixels().map(|p| p.0[0] as usize == k + 1).collect();
        assert_eq!(from_png, img.mask(k));
    }
    // A corrupt line is named.
    std::fs::write(root.join("metadata.jsonl"), "{\"file_name\": 1}\n").unwrap();
    let err = read_rows(&root).unwrap_err().to_string();
    assert!(
        err.contains("metadata.jsonl") && err.contains(":1"),
        "{err}"
    );
}

#[test]
fn vocabulary_encodes_every_template() {
    let vocab = Vocab::default();
    let ids = vocab
        .encode("a red circle to the left of a blue square")
        .unwrap();
    assert_eq!(ids.len(), SEQ_LEN);
    assert_eq!(ids[0], vocab.bos());
    assert_eq!(ids[11], vocab.eos());
    assert!(ids[12..].iter().all(|&i| i == vocab.pad()));
    let nouns = ["circle".to_string(), "square".to_string()];
    let pos = vocab
        .noun_positions("a red circle to the left of a blue square", &nouns)
        .unwrap();
    assert_eq!(pos, vec![vec![3], vec![10]]);
    for split in [Split::Train, Split::HeldOut] {
        for s in config().generate(split, 200, 9).unwrap() {
            vocab.encode(&s.caption()).unwrap();
        }
    }
    let err = vocab.encode("a purple circle").unwrap_err().to_string();
    assert!(err.contains("purple"), "{err}");
}

type Nd = crate::TestBackend;
type Ad = burn::backend::Autodiff<Nd>;

#[test]
fn sets_batch_pixels_captions_and_masks() {
    let vocab = Vocab::default();
    let scenes = config().generate(Split::Train, 5, 11).unwrap();
    let set = ShapesSet::new(scenes.clone(), 32, &vocab).unwrap();
    let device = Default::default();
    let b = set.batch::<Nd>(&[3, 1], &[false, true], &device).unwrap();
    assert_eq!(b.pixels.dims(), [2, 3, 32, 32]);
    // Background pixel (0, 0) of scene 3, channel 0: 235 / 127.5 - 1.
    let first: Vec<f32> = b
        .pixels
        .clone()
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    assert!((first[0] - (235.0 / 127.5 - 1.0)).abs() < 1e-6);
    assert_eq!(b.ids[0], vocab.encode(&scenes[3].caption()).unwrap());
    assert_eq!(b.ids[1], vocab.encode("").unwrap());
    assert!(b.nouns[1].is_empty());
    // Each noun's mask is the union of the objects it names.
    let img = render(&scenes[3], 32);
    for (k, (_, objects)) in scenes[3].noun_objects().iter().enumerate() {
        assert_eq!(set.masks[3][k], img.union_coverage(objects));
    }
    let err = set
        .batch::<Nd>(&[5], &[], &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("index 5"), "{err}");
}

#[test]
fn model_round_trips_and_maps_are_measured() {
    let device = Default::default();
    let config = ShapesModelConfig::tiny();
    let model: ShapesModel<Ad> = config.init(&device).unwrap();
    let dir = TempDir::new("shapes-model");
    let path = dir.path("base.safetensors");
    std::fs::write(path.with_extension("safetensors.tmp"), b"stale").unwrap();
    model.save(&path).unwrap();
    model.save(&path).unwrap(); // over an existing file too
    let loaded: ShapesModel<Ad> = config.init::<Ad>(&device).unwrap().load(&path).unwrap();
    let vocab = Vocab::default();
    let set = ShapesSet::new(
        ShapesConfig::new().generate(Split::HeldOut, 3, 1).unwrap(),
        32,
        &vocab,
    )
    .unwrap();
    let schedule = flow_schedule();
    let probe = AgreementProbe {
        levels: vec![0.1, 0.9],
        schedule,
        config: crate::ctcal::CtcalConfig::sd3(),
        batch: 2,
        seed: 0,
    };
    let measure = |m: &ShapesModel<Ad>| agreement_by_level(m, &set, &probe, &device).unwrap();
    let a = measure(&model);
    assert_eq!(a, measure(&loaded));
    let nouns: usize = set.nouns.iter().map(|n| n.0.len()).sum();
    let chance: f32 = set
        .masks
        .iter()
        .flatten()
        .map(|m| m.iter().sum::<f32>() / m.len() as f32)
        .sum::<f32>()
        / nouns as f32;
    for level in &a {
        assert_eq!(level.maps, nouns);
        assert!((level.chance - chance).abs() < 1e-6);
        assert!((0.0..=1.0).contains(&level.mass_inside) && (0.0..=1.0).contains(&level.iou));
    }
    // A width mismatch between the halves is refused.
    let bad = ShapesModelConfig::new(config.text.clone().with_hidden_size(32), config.denoiser);
    let err = bad.init::<Nd>(&device).err().unwrap().to_string();
    assert!(err.contains("joint_attention_dim"), "{err}");
}

/// With the exact velocity of one data point, `(x - x0) / sigma`, Euler steps land on it: the
/// flow's straight paths make every step exact.
#[test]
fn flow_euler_reaches_the_data_point_of_an_exact_velocity() {
    let device = Default::default();
    let x0 = Tensor::<Nd, 4>::from_floats([[[[0.5, -0.25], [1.0, 0.0]]]], &device);
    let noise = Tensor::<Nd, 4>::from_floats([[[[-1.0, 2.0], [0.3, 0.7]]]], &device);
    let target = x0.clone();
    let out = flow_euler(noise, &linear_sigmas(7), |x, sigma| {
        Ok((x - target.clone()).div_scalar(sigma))
    })
    .unwrap();
    let diff: f64 = (out - x0).abs().max().into_scalar();
    assert!(diff < 1e-12, "{diff}");
    assert_eq!(linear_sigmas(4), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
}

/// A LoRA fine-tune changes the denoiser and leaves the text encoder bit for bit; the paired
/// arms (plain, CTCal) see the same first batch (same diffusion loss) and only the CTCal arm
/// has a CTCal loss.
#[test]
fn fine_tunes_freeze_the_text_encoder_and_pair_the_arms() {
    let device = Default::default();
    let vocab = Vocab::default();
    let set = ShapesSet::new(config().generate(Split::Train, 8, 3).unwrap(), 32, &vocab).unwrap();
    let schedule = flow_schedule();
    // burn initialises parameters lazily, each clone on its own: saved and loaded, the base's
    // values are fixed before it is cloned.
    let dir = TempDir::new("shapes-ft");
    let fixed = dir.path("base.safetensors");
    let init = || ShapesModelConfig::tiny().init::<Ad>(&device).unwrap();
    init().save(&fixed).unwrap();
    let base = init().load(&fixed).unwrap();
    // Every tensor's bytes by name (the file's header order is not fixed).
    let params = |m: &ShapesModel<Ad>, text: bool| -> BTreeMap<String, Vec<u8>> {
        let path = dir.path("p.safetensors");
        let _ = std::fs::remove_file(&path);
        if text {
            crate::train::save_params(&m.text, &path, |_, _| true).unwrap();
        } else {
            crate::train::save_params(&m.denoiser, &path, |_, _| true).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect()
    };
    let (text_before, denoiser_before) = (params(&base, true), params(&base, false));
    let mut logs = Vec::new();
    for lambda in [0.0, 1.0] {
        let run = TrainRun::finetune(
            2,
            2,
            1e-2,
            2,
            crate::ctcal::CtcalConfig::sd3().with_lambda_ctcal(lambda),
        );
        let mut log = Vec::new();
        let after = train_shapes(base.clone(), &set, &schedule, &run, &device, |_, p| {
            log.push(*p)
        })
        .unwrap();
        // (assert!, not assert_eq!: the operands are whole weight files)
        assert!(params(&after, true) == text_before, "text encoder changed");
        assert!(
            params(&after, false) != denoiser_before,
            "denoiser unchanged"
        );
        logs.push(log);
    }
    assert_eq!(logs[0][0].diffusion, logs[1][0].diffusion);
    assert_eq!(logs[0][0].ctcal, 0.0);
    assert!(logs[1][0].ctcal > 0.0);
}

/// The shipped base model is trained: its flow loss on held-out scenes is a fraction of a
/// fresh model's (about 1.6), and it loads into the tiny config.
#[test]
fn shipped_base_model_is_trained() {
    let device = Default::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/shapes-base/base.safetensors");
    let model: ShapesModel<Ad> = ShapesModelConfig::tiny()
        .init(&device)
        .unwrap()
        .load(&path)
        .unwrap();
    let set = ShapesSet::new(
        config().generate(Split::HeldOut, 16, 77).unwrap(),
        32,
        &Vocab::default(),
    )
    .unwrap();
    let schedule = flow_schedule();
    let loss = heldout_loss(&model, &set, &schedule, &[0.3, 0.6], 0, &device).unwrap();
    assert!(loss < 0.3, "held-out flow loss {loss}");
    let fresh: ShapesModel<Ad> = ShapesModelConfig::tiny().init(&device).unwrap();
    let fresh_loss = heldout_loss(&fresh, &set, &schedule, &[0.3, 0.6], 0, &device).unwrap();
    assert!(
        fresh_loss > 4.0 * loss,
        "fresh {fresh_loss} vs trained {loss}"
    );
}
