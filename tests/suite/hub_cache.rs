//! Pipelines by model id, from a Hugging Face cache laid out as huggingface_hub writes it
//! (`models--<owner>--<name>/refs/main`, `snapshots/<commit>/...` relative links into
//! `blobs/`): loaded through [`ModelLocation`], the tiny SD 2.1 pipeline generates diffusers'
//! images, and a blob deleted from the cache is named with the command that fetches it.

use std::path::{Path, PathBuf};

use ctcal::hub::ModelLocation;
use ctcal::pipeline::StableDiffusion;

use crate::common::Cpu;
use crate::pipeline_parity::{sd21_matches, weights};

const COMMIT: &str = "4bd1c3e5f28a0a39c7d1f2e3a4b5c6d7e8f90a1b";

/// A cache under `name` holding `folder` as the model `acme/tiny-sd21` at `main`.
fn cache_of(folder: &Path, name: &str) -> PathBuf {
    let cache = std::env::temp_dir().join(format!("ctcal-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let repo = cache.join("models--acme--tiny-sd21");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let mut files = vec![PathBuf::new()];
    let mut n = 0;
    while let Some(rel) = files.pop() {
        for entry in std::fs::read_dir(folder.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                files.push(rel);
                continue;
            }
            n += 1;
            let blob = format!("blob{n:04}");
            std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
            let link = snapshot.join(&rel);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            let up = "../".repeat(rel.components().count() + 1);
            #[cfg(unix)]
            std::os::unix::fs::symlink(format!("{up}blobs/{blob}"), &link).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(entry.path(), &link).unwrap();
        }
    }
    cache
}

#[test]
fn a_pipeline_by_id_from_the_cache_generates_diffusers_images() {
    let cache = cache_of(&weights("tiny-sd21"), "generate");
    let location =
        ModelLocation::resolve("acme/tiny-sd21", None, Some(&cache), "model_index.json").unwrap();
    assert_eq!(
        location.root,
        cache.join("models--acme--tiny-sd21/snapshots").join(COMMIT)
    );
    let device = Default::default();
    let pipe = StableDiffusion::<Cpu>::from_pretrained(&location, None, &device).unwrap();
    sd21_matches(&pipe, &device);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[cfg(unix)]
#[test]
fn a_file_missing_from_the_cache_is_named_with_its_fetch_command() {
    let cache = cache_of(&weights("tiny-sd21"), "missing");
    let location =
        ModelLocation::resolve("acme/tiny-sd21", None, Some(&cache), "model_index.json").unwrap();
    // A partial download: the link is there, its blob is not.
    let weights = location
        .root
        .join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(std::fs::canonicalize(&weights).unwrap()).unwrap();
    let device = Default::default();
    let err = StableDiffusion::<Cpu>::from_pretrained(&location, None, &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unet: no weights found (looked for diffusion_pytorch_model.safetensors")
            && msg.contains("acme/tiny-sd21 at main is in the hub cache")
            && msg.ends_with("fetch the rest with `hf download acme/tiny-sd21`)"),
        "{msg}"
    );
    // A missing tokenizer file is named the same way.
    let vocab = location.root.join("tokenizer/vocab.json");
    std::fs::remove_file(std::fs::canonicalize(&vocab).unwrap()).unwrap();
    let msg = StableDiffusion::<Cpu>::from_pretrained(&location, None, &device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("vocab.json") && msg.contains("`hf download acme/tiny-sd21`"),
        "{msg}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}
