//! Models named by Hugging Face id (`stabilityai/stable-diffusion-2-1`), found in the local hub
//! cache that diffusers' `from_pretrained` and `hf download` (`huggingface-cli download`) fill.
//!
//! The cache is read, never written, and nothing is downloaded: the crate works offline. The
//! layout is huggingface_hub's: `<cache>/models--<owner>--<name>/refs/<revision>` holds a commit
//! hash, `snapshots/<commit>/` the repository's files (links into `blobs/`). The lookup of a
//! file at a revision goes through the `hf-hub` crate's [`hf_hub::Cache`]; this module adds
//! where the cache is ([`cache_dir`]), revisions given as commit hashes, and errors that name
//! the missing file and the command that fetches it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The hub cache folder, as huggingface_hub finds it: `HF_HUB_CACHE` (or the older
/// `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`. `None` when none of these is set and there is no home folder.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`cache_dir`] with the environment given as a lookup (for tests and embedding).
pub fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    if let Some(home) = set("HF_HOME") {
        return Some(home.join("hub"));
    }
    let cache = set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("huggingface").join("hub"))
}

/// Whether `name` is a valid hub repository id: `name` or `owner/name` of letters, digits,
/// `-`, `_` and `.`, without `--` or `..`, at most 96 characters (huggingface_hub's rule).
pub fn is_repo_id(name: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    let parts: Vec<&str> = name.split('/').collect();
    name.len() <= 96
        && !name.contains("--")
        && !name.contains("..")
        && matches!(parts.len(), 1 | 2)
        && parts.iter().all(|p| part_ok(p))
}

/// A model in the hub cache: which repository, at which revision, and the snapshot folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSnapshot {
    /// `owner/name`.
    pub repo_id: String,
    /// The revision asked for: a branch, a tag or a commit hash (`main` by default).
    pub revision: String,
    /// The commit the revision points to in the cache.
    pub commit: String,
}

impl HubSnapshot {
    /// The command that fetches `file` of this model at this revision (the whole repository
    /// with `None`).
    pub fn fetch_command(&self, file: Option<&str>) -> String {
        let mut command = format!("hf download {}", self.repo_id);
        if let Some(file) = file {
            command.push(' ');
            command.push_str(file);
        }
        if self.revision != "main" {
            command.push_str(" --revision ");
            command.push_str(&self.revision);
        }
        command
    }
}

/// Where a model named as diffusers' `from_pretrained` takes it (a folder or a hub id) lives
/// on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocation {
    /// The folder to load from: the given folder, or the hub snapshot.
    pub root: PathBuf,
    /// The hub model, when the name was an id.
    pub hub: Option<HubSnapshot>,
}

impl ModelLocation {
    /// Resolves `name_or_path`: an existing folder is used as it is; otherwise it must be a hub
    /// id whose `revision` (default `main`) is in the cache at `cache` (default
    /// [`cache_dir`]) with the file `marker` (`model_index.json` for a pipeline,
    /// `config.json` for one model). Errors name the folder or id, the revision, the cache
    /// and the command that fetches what is missing.
    pub fn resolve(
        name_or_path: &str,
        revision: Option<&str>,
        cache: Option<&Path>,
        marker: &str,
    ) -> Result<Self> {
        let path = Path::new(name_or_path);
        if path.is_dir() {
            if let Some(revision) = revision {
                return Err(Error::Config(format!(
                    "--revision {revision} names a hub revision, but {name_or_path} is a \
                     local folder"
                )));
            }
            return Ok(Self {
                root: path.to_path_buf(),
                hub: None,
            });
        }
        if !is_repo_id(name_or_path) {
            return Err(Error::MissingFile(format!(
                "{name_or_path}: no such folder, and not a Hugging Face model id (owner/name)"
            )));
        }
        let cache = match cache {
            Some(dir) => dir.to_path_buf(),
            None => cache_dir().ok_or_else(|| {
                Error::Config(format!(
                    "{name_or_path}: no hub cache to look in (set HF_HUB_CACHE or HF_HOME)"
                ))
            })?,
        };
        let revision = revision.unwrap_or("main");
        let snapshot = |commit: &str| HubSnapshot {
            repo_id: name_or_path.to_string(),
            revision: revision.to_string(),
            commit: commit.to_string(),
        };
        let repo = Repo::with_revision(name_or_path.into(), RepoType::Model, revision.into());
        let repo_dir = cache.join(repo.folder_name());
        if let Some(file) = Cache::new(cache.clone()).repo(repo).get(marker) {
            // The snapshot folder: `file` less the marker's components.
            let depth = Path::new(marker).components().count();
            let root = file
                .ancestors()
                .nth(depth)
                .unwrap_or(&repo_dir)
                .to_path_buf();
            let commit = root.file_name().unwrap_or_default().to_string_lossy();
            let hub = snapshot(&commit);
            return Ok(Self {
                root,
                hub: Some(hub),
            });
        }
        // Not found by hf-hub: say which part is missing.
        if !repo_dir.is_dir() {
            return Err(Error::MissingFile(format!(
                "{name_or_path}: no such folder, and no model of that id in the hub cache {} \
                 (HF_HUB_CACHE / HF_HOME); fetch it with `{}`",
                cache.display(),
                snapshot("").fetch_command(None)
            )));
        }
        // A commit hash has no ref file: its snapshot folder is named by it.
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        let commit = if is_commit {
            Some(revision.to_string())
        } else {
            std::fs::read_to_string(repo_dir.join("refs").join(revision))
                .ok()
                .map(|c| c.trim().to_string())
        };
        let snapshot_dir = commit
            .as_deref()
            .map(|c| repo_dir.join("snapshots").join(c))
            .filter(|d| d.is_dir());
        let (Some(commit), Some(root)) = (commit, snapshot_dir) else {
            return Err(Error::MissingFile(format!(
                "{name_or_path}: revision {revision} is not in the hub cache {} (it has {}); \
                 fetch it with `{}`",
                repo_dir.display(),
                cached_revisions(&repo_dir),
                snapshot("").fetch_command(None)
            )));
        };
        let hub = snapshot(&commit);
        if !root.join(marker).is_file() {
            return Err(Error::MissingFile(format!(
                "{}: no {marker} ({name_or_path} at {revision} is in the hub cache only in \
                 part); fetch it with `{}`",
                root.display(),
                hub.fetch_command(Some(marker))
            )));
        }
        Ok(Self {
            root,
            hub: Some(hub),
        })
    }

    /// `error` from loading this model, with the fetch command added where a file of a hub
    /// snapshot is missing (a partial download, a link whose blob was deleted).
    pub fn explain(&self, error: Error) -> Error {
        let Some(hub) = &self.hub else { return error };
        match error {
            Error::Io { path, error } if error.kind() == std::io::ErrorKind::NotFound => {
                match path.strip_prefix(&self.root) {
                    Ok(file) => Error::MissingFile(format!(
                        "{}: missing from the hub cache ({} at {}); fetch it with `{}`",
                        path.display(),
                        hub.repo_id,
                        hub.revision,
                        hub.fetch_command(Some(&file.to_string_lossy()))
                    )),
                    Err(_) => Error::Io { path, error },
                }
            }
            Error::MissingFile(message) => Error::MissingFile(format!(
                "{message}\n({} at {} is in the hub cache {} only in part; fetch the rest with \
                 `{}`)",
                hub.repo_id,
                hub.revision,
                self.root.display(),
                hub.fetch_command(None)
            )),
            other => other,
        }
    }
}

/// The revisions the cache holds for a repository folder: its refs and snapshot commits.
fn cached_revisions(repo_dir: &Path) -> String {
    let names = |dir: PathBuf| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let all: Vec<String> = names(repo_dir.join("refs"))
        .into_iter()
        .chain(names(repo_dir.join("snapshots")))
        .collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests;
