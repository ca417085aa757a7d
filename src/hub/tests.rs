//! The cache lookup against cache folders laid out as huggingface_hub writes them.

use super::*;

const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// A fresh cache holding `acme/tiny` with `main` at [`MAIN`] (a full snapshot), the tag `v1`
/// at [`OLD`] (a snapshot without `model_index.json`), files linked into `blobs/` as
/// huggingface_hub does on Unix.
fn cache(name: &str) -> PathBuf {
    let cache = std::env::temp_dir().join(format!("ctcal-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let repo = cache.join("models--acme--tiny");
    let write = |rel: &str, text: &str| {
        let path = repo.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("refs/main", MAIN);
    write("refs/v1", OLD);
    write(
        "blobs/aaa",
        "{\"_class_name\": \"StableDiffusionPipeline\"}",
    );
    write("blobs/bbb", "{}");
    let link = |blob: &str, rel: &str| {
        let path = repo.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(repo.join("blobs").join(blob), &path).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(repo.join("blobs").join(blob), &path).unwrap();
    };
    link("aaa", &format!("snapshots/{MAIN}/model_index.json"));
    link("bbb", &format!("snapshots/{MAIN}/unet/config.json"));
    link("bbb", &format!("snapshots/{OLD}/unet/config.json"));
    cache
}

#[test]
fn the_cache_folder_follows_huggingface_hubs_variables() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let all = env(&[
        ("HF_HUB_CACHE", "/hub"),
        ("HUGGINGFACE_HUB_CACHE", "/old"),
        ("HF_HOME", "/hf"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ]);
    assert_eq!(cache_dir_from(all), Some(PathBuf::from("/hub")));
    let legacy = env(&[("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HOME", "/hf")]);
    assert_eq!(cache_dir_from(legacy), Some(PathBuf::from("/old")));
    let home = env(&[
        ("HF_HUB_CACHE", ""),
        ("HF_HOME", "/hf"),
        ("HOME", "/home/u"),
    ]);
    assert_eq!(cache_dir_from(home), Some(PathBuf::from("/hf/hub")));
    let xdg = env(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]);
    assert_eq!(
        cache_dir_from(xdg),
        Some(PathBuf::from("/xdg/huggingface/hub"))
    );
    let plain = env(&[("HOME", "/home/u")]);
    assert_eq!(
        cache_dir_from(plain),
        Some(PathBuf::from("/home/u/.cache/huggingface/hub"))
    );
    assert_eq!(cache_dir_from(env(&[])), None);
}

#[test]
fn repo_ids_are_checked_as_huggingface_hub_checks_them() {
    for good in [
        "stabilityai/stable-diffusion-2-1",
        "gpt2",
        "stabilityai/stable-diffusion-3.5-medium",
        "a_b/c.d",
    ] {
        assert!(is_repo_id(good), "{good}");
    }
    for bad in [
        "",
        "a/b/c",
        "/abs/path",
        "weights/../x",
        "a--b/c",
        "owner/",
        "-x/y",
        "x/y.",
        "sp ace/x",
        &"a".repeat(97),
    ] {
        assert!(!is_repo_id(bad), "{bad}");
    }
}

#[test]
fn ids_resolve_to_the_snapshot_of_their_revision() {
    let cache = cache("resolve");
    let repo = cache.join("models--acme--tiny");
    let main = ModelLocation::resolve("acme/tiny", None, Some(&cache), "model_index.json");
    let main = main.unwrap();
    assert_eq!(main.root, repo.join("snapshots").join(MAIN));
    let hub = main.hub.as_ref().unwrap();
    assert_eq!((hub.revision.as_str(), hub.commit.as_str()), ("main", MAIN));
    assert!(main.root.join("unet/config.json").is_file());

    // A tag through its ref; a commit hash straight to its snapshot.
    let tag = ModelLocation::resolve("acme/tiny", Some("v1"), Some(&cache), "unet/config.json");
    assert_eq!(tag.unwrap().hub.unwrap().commit, OLD);
    let commit = ModelLocation::resolve("acme/tiny", Some(OLD), Some(&cache), "unet/config.json");
    let commit = commit.unwrap();
    assert_eq!(commit.root, repo.join("snapshots").join(OLD));
    assert_eq!(commit.hub.unwrap().revision, OLD);

    // A local folder wins over the cache and takes no revision.
    let local = cache.to_string_lossy().into_owned();
    let folder = ModelLocation::resolve(&local, None, Some(&cache), "model_index.json");
    assert_eq!(
        folder.unwrap(),
        ModelLocation {
            root: cache.clone(),
            hub: None
        }
    );
    let err = ModelLocation::resolve(&local, Some("v1"), Some(&cache), "x").unwrap_err();
    assert!(err.to_string().contains("local folder"), "{err}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn what_is_not_cached_is_named_with_the_command_that_fetches_it() {
    let cache = cache("missing");
    let err = |id: &str, revision: Option<&str>| {
        ModelLocation::resolve(id, revision, Some(&cache), "model_index.json")
            .unwrap_err()
            .to_string()
    };
    let msg = err("acme/other", None);
    assert!(
        msg.contains("acme/other: no such folder, and no model of that id in the hub cache")
            && msg.contains("`hf download acme/other`"),
        "{msg}"
    );
    let msg = err("acme/tiny", Some("v2"));
    assert!(
        msg.contains("revision v2 is not in the hub cache")
            && msg.contains(&format!("main, v1, {MAIN}, {OLD}"))
            && msg.contains("`hf download acme/tiny --revision v2`"),
        "{msg}"
    );
    // The tag's snapshot lacks the pipeline index.
    let msg = err("acme/tiny", Some("v1"));
    assert!(
        msg.contains("no model_index.json")
            && msg.contains("`hf download acme/tiny model_index.json --revision v1`"),
        "{msg}"
    );
    let msg = err("not a path or id", None);
    assert!(msg.contains("not a Hugging Face model id"), "{msg}");

    // A load error under the snapshot gains the file's fetch command.
    let main = ModelLocation::resolve("acme/tiny", None, Some(&cache), "model_index.json").unwrap();
    let gone = main.root.join("vae/config.json");
    let io = Error::io(&gone, std::io::Error::from(std::io::ErrorKind::NotFound));
    let msg = main.explain(io).to_string();
    assert!(
        msg.contains("vae/config.json: missing from the hub cache")
            && msg.ends_with("`hf download acme/tiny vae/config.json`"),
        "{msg}"
    );
    let other = Error::Config("unrelated".into());
    assert_eq!(main.explain(other).to_string(), "bad config: unrelated");
    std::fs::remove_dir_all(&cache).unwrap();
}
