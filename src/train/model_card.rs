//! The model card (`README.md`) a run leaves in its output folder, as diffusers' LoRA training
//! scripts write one (`save_model_card`): a YAML header the Hugging Face Hub reads (base model,
//! library, tags), what was trained and how, the validation prompts and images, and how to load
//! the result with diffusers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::TrainConfig;
use crate::error::Result;
use crate::weights::write_atomic;

/// What a model card says about a run.
#[derive(Debug, Clone)]
pub struct ModelCard<'a> {
    /// The base model, as the user named it (a hub id or a folder).
    pub base_model: &'a str,
    /// The run's settings.
    pub config: &'a TrainConfig,
    /// The LoRA rank, or `None` for a full fine-tune.
    pub lora_rank: Option<usize>,
    /// Whether LoRA on the text encoders trained too (at `config.text_encoder_lr`).
    pub text_encoder: bool,
    /// The validation prompts.
    pub prompts: &'a [String],
    /// The newest validation image, relative to the output folder.
    pub image: Option<PathBuf>,
}

impl ModelCard<'_> {
    /// The card's Markdown text.
    pub fn render(&self) -> String {
        let c = self.config;
        // JSON strings are YAML double-quoted scalars: any base model name stays one value.
        let quoted = serde_json::to_string(self.base_model).unwrap_or_default();
        let mut s = String::new();
        let _ = writeln!(s, "---\nbase_model: {quoted}\nlibrary_name: diffusers");
        let _ = writeln!(s, "tags:\n- text-to-image\n- diffusers\n- ctcal");
        if self.lora_rank.is_some() {
            let _ = writeln!(s, "- lora");
        }
        let _ = writeln!(s, "inference: true\n---\n");
        let what = match (self.lora_rank, self.text_encoder) {
            (Some(rank), false) => format!("LoRA adapters (rank {rank})"),
            (Some(rank), true) => {
                format!("LoRA adapters (rank {rank}, on the denoiser and the text encoders)")
            }
            (None, _) => "A full fine-tune".to_string(),
        };
        let _ = writeln!(s, "# CTCal fine-tune of {}\n", self.base_model);
        let _ = writeln!(
            s,
            "{what} of `{}`, trained with CTCal (cross-timestep self-calibration: the \
             model's own cross-attention maps at a low-noise timestep supervise its maps at a \
             noisy one, for the caption's nouns) by the `ctcal` crate.\n",
            self.base_model
        );
        let _ = writeln!(s, "## Training settings\n\n| setting | value |\n|---|---|");
        let schedule = format!("{:?}, {} warm-up steps", c.lr_schedule, c.warmup_steps);
        let clip = c.max_grad_norm.map_or("none".into(), |n| n.to_string());
        for (name, value) in [
            ("steps", c.steps.to_string()),
            ("batch size", c.batch_size.to_string()),
            ("gradient accumulation", c.grad_accum.to_string()),
            ("learning rate", format!("{:e}", c.lr)),
            (
                "text-encoder learning rate",
                match self.text_encoder {
                    true => format!("{:e}", c.text_encoder_lr),
                    false => "not trained".into(),
                },
            ),
            ("schedule", schedule),
            ("AdamW weight decay", c.weight_decay.to_string()),
            ("gradient norm clipping", clip),
            ("mixed precision", format!("{:?}", c.mixed_precision)),
            ("CTCal weight (lambda)", c.ctcal.lambda_ctcal.to_string()),
            ("seed", c.seed.to_string()),
        ] {
            let _ = writeln!(s, "| {name} | {value} |");
        }
        if !self.prompts.is_empty() {
            let _ = writeln!(s, "\n## Validation\n\nPrompts, left to right:\n");
            for prompt in self.prompts {
                let _ = writeln!(s, "- {prompt}");
            }
            if let Some(image) = &self.image {
                let _ = writeln!(s, "\n![validation images]({})", image.display());
            }
        }
        let _ = writeln!(s, "\n## Use with diffusers\n\n```python");
        let _ = writeln!(s, "from diffusers import DiffusionPipeline\n");
        let _ = writeln!(s, "pipe = DiffusionPipeline.from_pretrained({quoted})");
        match self.lora_rank {
            Some(_) => {
                let _ = writeln!(s, "pipe.load_lora_weights(\"path/to/this/folder\")");
            }
            None => {
                let _ = writeln!(
                    s,
                    "# the fine-tuned weights are in this folder's model folder"
                );
            }
        }
        let _ = writeln!(s, "```");
        s
    }

    /// Writes the card to `out/README.md` (replacing it whole or not at all).
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        let path = out.join("README.md");
        write_atomic(&path, self.render().as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::CtcalConfig;

    #[test]
    fn the_card_has_the_hub_header_the_settings_and_the_loading_code() {
        let config = TrainConfig::new(CtcalConfig::sd21())
            .with_steps(15_000)
            .with_batch_size(16)
            .with_lr(1e-4);
        let prompts = ["a red circle".to_string(), "two blue squares".to_string()];
        let card = ModelCard {
            base_model: "stabilityai/stable-diffusion-2-1",
            config: &config,
            lora_rank: Some(4),
            text_encoder: false,
            prompts: &prompts,
            image: Some(PathBuf::from("validation/step_15000.png")),
        };
        let text = card.render();
        let header = "---\nbase_model: \"stabilityai/stable-diffusion-2-1\"\n\
                      library_name: diffusers\ntags:\n- text-to-image\n- diffusers\n- ctcal\n\
                      - lora\ninference: true\n---\n";
        assert!(text.starts_with(header), "{text}");
        for line in [
            "LoRA adapters (rank 4) of `stabilityai/stable-diffusion-2-1`",
            "| steps | 15000 |",
            "| batch size | 16 |",
            "| learning rate | 1e-4 |",
            "- two blue squares",
            "![validation images](validation/step_15000.png)",
            "pipe = DiffusionPipeline.from_pretrained(\"stabilityai/stable-diffusion-2-1\")",
            "pipe.load_lora_weights(",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        let both = ModelCard {
            text_encoder: true,
            ..card.clone()
        }
        .render();
        for line in [
            "LoRA adapters (rank 4, on the denoiser and the text encoders) of",
            "| text-encoder learning rate | 5e-6 |",
        ] {
            assert!(both.contains(line), "no {line:?} in\n{both}");
        }
        assert!(text.contains("| text-encoder learning rate | not trained |"));
        // A folder name with YAML's special characters stays one quoted value.
        let odd = ModelCard {
            base_model: "C:\\models\\sd: \"x\"",
            lora_rank: None,
            text_encoder: false,
            ..card
        };
        let text = odd.render();
        assert!(
            text.contains("base_model: \"C:\\\\models\\\\sd: \\\"x\\\"\"\n"),
            "{text}"
        );
        assert!(!text.contains("- lora") && text.contains("A full fine-tune"));
    }
}
