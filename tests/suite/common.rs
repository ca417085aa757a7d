//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Tensor, backend::Backend};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(rel)
}

/// `max |a - b| / max |b|`: the relative error the parity tests bound.
pub fn rel_err(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A tensor's values as f32.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The CPU test backend. f32 throughout this binary: burn 0.21 fixes one default float dtype
/// per device type per process, so f32 and f64 `NdArray` must not be mixed here.
pub type Cpu = burn::backend::NdArray<f32>;

/// The wgpu test backend (Mesa's software Vulkan driver on CI).
#[cfg(feature = "wgpu")]
pub type Gpu = burn::backend::Wgpu<f32>;

/// A key manifest diffusers wrote for a published config: `(key, shape)` per line.
pub fn manifest(name: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{name}.txt"))).unwrap();
    text.lines()
        .map(|line| {
            let (key, shape) = line.split_once(' ').unwrap();
            let shape: Vec<usize> = serde_json::from_str(shape).unwrap();
            (key.to_string(), shape)
        })
        .collect()
}

/// Our `(key, shape)` list equals diffusers', naming the first differences.
pub fn assert_same_keys(ours: &[(String, Vec<usize>)], theirs: &[(String, Vec<usize>)]) {
    let missing: Vec<_> = theirs
        .iter()
        .filter(|k| !ours.contains(k))
        .take(5)
        .collect();
    let extra: Vec<_> = ours
        .iter()
        .filter(|k| !theirs.contains(k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(ours.len(), theirs.len());
}

/// Every captured map equals diffusers' map of the same module path (the `outputs` file holds
/// `out` plus one map per layer) within `tol`, with the shape and a grid that lays out its
/// queries.
pub fn assert_maps<B: Backend>(
    case: &str,
    maps: Vec<ctcal::attention::StoredMap<B>>,
    expected: &ctcal::weights::TensorFile,
    tol: f32,
) {
    assert_eq!(
        maps.len(),
        expected.tensors.len() - 1,
        "{case}: one map per diffusers layer"
    );
    for map in maps {
        let path = map.site.path();
        let (shape, want) = expected
            .tensors
            .get(&path)
            .unwrap_or_else(|| panic!("{case}: diffusers has no map {path}"));
        assert_eq!(&map.probs.dims().to_vec(), shape, "{case}: {path} shape");
        assert_eq!(map.grid[0] * map.grid[1], shape[2], "{case}: {path} grid");
        let err = rel_err(&values(map.probs), want);
        assert!(err < tol, "{case}: map {path} relative error {err}");
    }
}

/// `n` deterministic cached samples in the shapes of the `unet_sd2` fixture (latents 4x16x12,
/// 7 tokens of width 12), captioned "a red cube and a blue ball" with `noun_tokens` given by
/// `nouns(i)` (a JSON list), in `dir`; returns its `metadata.jsonl`.
pub fn write_unet_sd2_data(
    dir: &std::path::Path,
    n: usize,
    nouns: impl Fn(usize) -> &'static str,
) -> PathBuf {
    use ctcal::data::{HostTensor, write_cached_sample};
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = String::new();
    for i in 0..n {
        let wave = |len: usize, k: f32| {
            (0..len)
                .map(|j| ((j as f32 + 1.0) * k * (i as f32 + 1.0)).sin())
                .collect()
        };
        let latents = HostTensor::new([4, 16, 12], wave(4 * 16 * 12, 0.37)).unwrap();
        let hidden = HostTensor::new([7, 12], wave(7 * 12, 0.11)).unwrap();
        let name = format!("{i}.safetensors");
        write_cached_sample(&dir.join(&name), &latents, &hidden, None).unwrap();
        rows += &format!(
            "{{\"file_name\": \"{name}\", \"text\": \"a red cube and a blue ball\", \"noun_tokens\": {}}}\n",
            nouns(i)
        );
    }
    let meta = dir.join("metadata.jsonl");
    std::fs::write(&meta, rows).unwrap();
    meta
}

/// The tensors of `files` in checkpoint `steps` of the run in `out`, keyed `file:name`.
pub fn checkpoint_tensors(
    out: &std::path::Path,
    steps: usize,
    files: &[&str],
) -> Vec<(String, Vec<f32>)> {
    let dir = out.join(format!("checkpoints/step-{steps:07}"));
    let mut all = Vec::new();
    for file in files {
        let f = ctcal::weights::TensorFile::read(&dir.join(file)).unwrap();
        all.extend(
            f.tensors
                .into_iter()
                .map(|(k, (_, v))| (format!("{file}:{k}"), v)),
        );
    }
    all
}
