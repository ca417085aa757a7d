//! The crate's error type: every variant names the file, key, shape or field at fault.

use std::path::{Path, PathBuf};

/// Errors from loading configs and weights, and from bad inputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written (a full disk says so).
    #[error("{}: {error}{}", path.display(), disk_full_hint(error))]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (part of the message, not a separate source).
        error: std::io::Error,
    },
    /// A JSON file did not parse.
    #[error("{path}: invalid JSON: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause (part of the message).
        error: serde_json::Error,
    },
    /// A config is inconsistent or asks for something unsupported.
    #[error("bad config: {0}")]
    Config(String),
    /// A safetensors file is truncated or malformed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A model folder does not hold the expected files.
    #[error("{0}")]
    MissingFile(String),
    /// Weights do not match the model: missing, unexpected or mis-shaped keys.
    #[error("{0}")]
    Weights(String),
    /// Training cannot go on (a non-finite loss).
    #[error("training stopped: {0}")]
    Training(String),
    /// An input tensor has the wrong shape or is missing.
    #[error("bad input: {0}")]
    Input(String),
    /// A training-data row is bad: a missing or unreadable file, an empty caption, a noun not
    /// in its caption, features of the wrong shape.
    #[error("{}:{line}: {message}", file.display())]
    Data {
        /// The metadata file holding the row.
        file: PathBuf,
        /// The row's 1-based line number in that file.
        line: usize,
        /// What is wrong, naming the data file.
        message: String,
    },
    /// The data loader cannot produce a batch (every sample skipped, its thread stopped).
    #[error("data loader: {0}")]
    Loader(String),
    /// Another peer of a data-parallel run failed at this step (its own error says why, on its
    /// machine); this peer stopped with it.
    #[error(
        "training stopped: step {step}: another peer of the data-parallel run failed (its \
         error is reported on its machine)"
    )]
    PeerFailed {
        /// The 1-based step every peer stopped at.
        step: usize,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Spells out ENOSPC, which the standard message words as "No space left on device".
fn disk_full_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free space and rerun; with --resume a run continues from its \
             last checkpoint, which is intact)"
        }
        _ => "",
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_so_and_names_the_file() {
        let full = Error::io(
            Path::new("out/metrics.jsonl"),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let msg = full.to_string();
        assert!(
            msg.starts_with("out/metrics.jsonl: ") && msg.contains("disk is full"),
            "{msg}"
        );
        let other = Error::io(
            Path::new("x"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(!other.to_string().contains("disk"));
    }
}
