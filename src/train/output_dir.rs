//! The output folder of a run, handled as accelerate and diffusers' scripts handle theirs: a
//! fresh run needs an empty (or new) folder, `resume` continues the run a folder holds, and
//! `overwrite` clears the folder first. Nothing of two runs ends up mixed in one folder.

use std::path::Path;

use crate::error::{Error, Result};

/// Checks that a run may use `out`, without touching it (so that a caller can check before
/// loading anything): `out` is absent or a folder; a fresh run (`resume` false) needs it empty
/// unless `overwrite`; `resume` needs a checkpoint there when the folder holds anything; the
/// two flags together are a contradiction.
pub fn check_output_dir(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if resume && overwrite {
        return Err(Error::Config(
            "resume and overwrite contradict each other: resume continues the run in the \
             output folder, overwrite clears it"
                .into(),
        ));
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::Config(format!(
            "output folder {} is a file; name a folder",
            out.display()
        )));
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() || overwrite {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    let more = match names.len() {
        n if n > 4 => format!(" and {} more", n - 4),
        _ => String::new(),
    };
    if !resume {
        return Err(Error::Config(format!(
            "output folder {} already holds a run ({shown}{more}); continue it with --resume, \
             clear it with --overwrite, or name another folder",
            out.display()
        )));
    }
    if !out.join("checkpoints").join("latest").is_file() {
        return Err(Error::Config(format!(
            "output folder {} holds files ({shown}{more}) but no checkpoint to resume from \
             (checkpoints/latest); start afresh with --overwrite",
            out.display()
        )));
    }
    Ok(())
}

/// [`check_output_dir`], then clears `out` when `overwrite` says so and creates it.
pub(crate) fn prepare_output_dir(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    check_output_dir(out, resume, overwrite)?;
    if overwrite && out.is_dir() {
        for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
            let path = entry.map_err(|e| Error::io(out, e))?.path();
            let removed = match path.is_dir() && !path.is_symlink() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_resume_and_overwrite_as_accelerate_does() {
        let root = std::env::temp_dir().join(format!("ctcal-outdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out = root.join("run");
        // New or empty: any run.
        prepare_output_dir(&out, false, false).unwrap();
        prepare_output_dir(&out, true, false).unwrap();
        // A folder with files but no checkpoint: neither a fresh run nor a resume.
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let msg = check_output_dir(&out, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("run") && msg.contains("metrics.jsonl"),
            "{msg}"
        );
        assert!(
            msg.contains("--resume") && msg.contains("--overwrite"),
            "{msg}"
        );
        let msg = check_output_dir(&out, true, false).unwrap_err().to_string();
        assert!(msg.contains("no checkpoint"), "{msg}");
        // With a checkpoint: resume is fine, a fresh run still refused.
        std::fs::create_dir_all(out.join("checkpoints")).unwrap();
        std::fs::write(out.join("checkpoints/latest"), "step-0000001").unwrap();
        check_output_dir(&out, true, false).unwrap();
        assert!(check_output_dir(&out, false, false).is_err());
        // Overwrite clears everything, and contradicts resume.
        assert!(check_output_dir(&out, true, true).is_err());
        prepare_output_dir(&out, false, true).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        // A file where the folder should be.
        let file = root.join("file");
        std::fs::write(&file, "x").unwrap();
        let msg = check_output_dir(&file, false, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is a file") && msg.contains("file"), "{msg}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
