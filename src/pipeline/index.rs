//! A diffusers pipeline folder: `model_index.json` and one sub-folder per component.
//!
//! diffusers saves a pipeline as
//! `model_index.json` + `unet/` or `transformer/`, `vae/`, `text_encoder*/`, `tokenizer*/`,
//! `scheduler/`; the index names each component's library and class (`null` for a component
//! the pipeline was saved without, such as SD 3's optional T5). This reads the index, checks
//! what a pipeline class needs is there, and resolves component folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::ConfigFile;
use crate::error::{Error, Result};

/// One entry of `model_index.json`: `"vae": ["diffusers", "AutoencoderKL"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The library that saved it (`diffusers`, `transformers`).
    pub library: String,
    /// Its class (`AutoencoderKL`, `CLIPTextModel`, ...).
    pub class: String,
}

/// A parsed pipeline folder.
#[derive(Debug, Clone)]
pub struct PipelineFolder {
    /// The folder holding `model_index.json`.
    pub root: PathBuf,
    /// The pipeline class (`StableDiffusionPipeline`, `StableDiffusion3Pipeline`).
    pub class: String,
    /// Components by name; `None` where the index says `[null, null]` (left out).
    pub components: BTreeMap<String, Option<Component>>,
}

impl PipelineFolder {
    /// Reads `root/model_index.json`.
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("model_index.json");
        let file = ConfigFile::read(&path)?;
        let bad = |what: String| file.error(&what);
        let map = file.fields();
        let class = file
            .class_name()
            .ok_or_else(|| bad("no `_class_name`".into()))?
            .to_string();
        let mut components = BTreeMap::new();
        for (name, entry) in map.iter().filter(|(k, _)| !k.starts_with('_')) {
            // Pipeline options (`requires_safety_checker: true`) are plain values, not pairs.
            let Value::Array(pair) = entry else { continue };
            let component = match pair.as_slice() {
                [Value::Null, Value::Null] => None,
                [Value::String(library), Value::String(class)] => Some(Component {
                    library: library.clone(),
                    class: class.clone(),
                }),
                _ => {
                    return Err(bad(format!(
                        "component `{name}` should be [library, class] or [null, null], not {entry}"
                    )));
                }
            };
            components.insert(name.clone(), component);
        }
        Ok(Self {
            root: root.to_path_buf(),
            class,
            components,
        })
    }

    /// Errors unless the pipeline class is one of `classes`.
    pub fn expect_class(&self, classes: &[&str]) -> Result<()> {
        if classes.contains(&self.class.as_str()) {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{}: `_class_name` is {}, expected {}",
            self.root.join("model_index.json").display(),
            self.class,
            classes.join(" or ")
        )))
    }

    /// The folder of component `name`, which must be listed with one of `classes` and exist.
    pub fn component(&self, name: &str, classes: &[&str]) -> Result<PathBuf> {
        self.optional(name, classes)?.ok_or_else(|| {
            Error::MissingFile(format!(
                "{}: the pipeline has no `{name}` (model_index.json lists it as null or not at all)",
                self.root.display()
            ))
        })
    }

    /// Like [`component`](Self::component), but `None` where the index leaves it out.
    pub fn optional(&self, name: &str, classes: &[&str]) -> Result<Option<PathBuf>> {
        let Some(Some(component)) = self.components.get(name) else {
            return Ok(None);
        };
        if !classes.contains(&component.class.as_str()) {
            return Err(Error::Config(format!(
                "{}: component `{name}` is a {}, this crate loads {}",
                self.root.join("model_index.json").display(),
                component.class,
                classes.join(" or ")
            )));
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(Error::MissingFile(format!(
                "{}: model_index.json lists `{name}` but the folder is missing",
                dir.display()
            )));
        }
        Ok(Some(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(index: &str, dirs: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "ctcal-index-{}-{}",
            std::process::id(),
            index.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("model_index.json"), index).unwrap();
        root
    }

    #[test]
    fn reads_components_and_nulls() {
        let root = folder(
            r#"{"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
                "vae": ["diffusers", "AutoencoderKL"], "text_encoder_3": [null, null],
                "requires_safety_checker": false}"#,
            &["vae"],
        );
        let f = PipelineFolder::open(&root).unwrap();
        f.expect_class(&["StableDiffusion3Pipeline"]).unwrap();
        assert_eq!(
            f.component("vae", &["AutoencoderKL"]).unwrap(),
            root.join("vae")
        );
        assert_eq!(
            f.optional("text_encoder_3", &["T5EncoderModel"]).unwrap(),
            None
        );
        let e = f
            .component("text_encoder_3", &["T5EncoderModel"])
            .unwrap_err();
        assert!(e.to_string().contains("text_encoder_3"), "{e}");
        let e = f.component("vae", &["AutoencoderTiny"]).unwrap_err();
        assert!(e.to_string().contains("is a AutoencoderKL"), "{e}");
        let e = f.expect_class(&["StableDiffusionPipeline"]).unwrap_err();
        assert!(e.to_string().contains("StableDiffusion3Pipeline"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn names_a_missing_folder_and_a_bad_entry() {
        let root = folder(
            r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#,
            &[],
        );
        let f = PipelineFolder::open(&root).unwrap();
        let e = f.component("unet", &["UNet2DConditionModel"]).unwrap_err();
        assert!(e.to_string().contains("folder is missing"), "{e}");
        std::fs::write(
            root.join("model_index.json"),
            r#"{"_class_name": "X", "unet": ["diffusers"]}"#,
        )
        .unwrap();
        let e = PipelineFolder::open(&root).unwrap_err();
        assert!(e.to_string().contains("component `unet`"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
