//! Renders images from a diffusers pipeline folder (SD 1.x/2.x or SD 3), optionally with a
//! LoRA trained by `train_sd21` / `train_sd3`.
//!
//! With no arguments it renders two prompts with the tiny random pipeline in
//! `weights/tiny-sd21` on the CPU (the pictures are noise-like: the tiny weights are random):
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- --pipeline weights/tiny-sd3 --steps 10
//! cargo run --release --example generate -- --pipeline path/to/stable-diffusion-2-1 \
//!     --backend cuda --prompt "a red cube on a blue sphere" --steps 30 --height 768 --width 768 \
//!     --lora out/train_sd21/pytorch_lora_weights.safetensors
//! ```
//! Writes one PNG per prompt (`000.png`, ...) and `prompts.txt` to `--out`.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ctcal::attention::AttentionBackend;
use ctcal::hub::ModelLocation;
use ctcal::launch::{BackendKind, OnBackend, launch};
use ctcal::lora::{LoraConfig, apply_lora, import_peft, merge_lora, peft_components};
use ctcal::pipeline::{
    GenerateConfig, PipelineFolder, SD_CLASSES, SD3_CLASSES, StableDiffusion, StableDiffusion3,
};
use ctcal::vae::tensor_to_images;

/// Render images from a diffusers pipeline folder.
#[derive(Parser, Debug)]
struct Cli {
    /// A diffusers pipeline folder (with `model_index.json`), or a model id in the Hugging Face
    /// cache (`HF_HUB_CACHE`, `HF_HOME`; nothing is downloaded).
    #[arg(
        long,
        visible_alias = "pretrained-model-name-or-path",
        alias = "pretrained_model_name_or_path",
        default_value = "weights/tiny-sd21"
    )]
    pipeline: String,
    /// The hub revision (branch, tag or commit) of a pipeline given by id.
    #[arg(long)]
    revision: Option<String>,
    /// A prompt (repeat for several); default: two shape captions.
    #[arg(long)]
    prompt: Vec<String>,
    /// A file with one prompt per line (added to `--prompt`).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Negative prompt, used for every prompt.
    #[arg(long, default_value = "")]
    negative: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Classifier-free guidance scale (1 turns it off).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height in pixels (default: the model's resolution).
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels.
    #[arg(long)]
    width: Option<usize>,
    /// SD 3: T5 tokens.
    #[arg(long, default_value_t = 256)]
    max_sequence_length: usize,
    /// A PEFT LoRA file (`pytorch_lora_weights.safetensors`) merged into the denoiser, and
    /// into the CLIP text encoders where it adapts them (`text_encoder.`, `text_encoder_2.`).
    #[arg(long)]
    lora: Option<PathBuf>,
    /// LoRA rank of that file.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Weight variant (`fp16` loads `*.fp16.safetensors`).
    #[arg(long)]
    variant: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "out/generate")]
    out: PathBuf,
    /// Backend.
    #[arg(long, default_value_t = BackendKind::default())]
    backend: BackendKind,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    launch(cli.backend, Run(&cli))?
}

struct Run<'a>(&'a Cli);

impl OnBackend for Run<'_> {
    type Output = Result<()>;
    fn run<B: AttentionBackend>(self, device: &B::Device) -> Result<()> {
        run::<B>(self.0, device)
    }
}

fn prompts(cli: &Cli) -> Result<Vec<String>> {
    let mut prompts = cli.prompt.clone();
    if let Some(path) = &cli.prompts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading prompts from {}", path.display()))?;
        prompts.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if prompts.is_empty() {
        prompts = vec![
            "a red circle to the left of a blue square".into(),
            "two yellow triangles".into(),
        ];
    }
    Ok(prompts)
}

fn run<B: AttentionBackend>(cli: &Cli, device: &B::Device) -> Result<()> {
    let prompts = prompts(cli)?;
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let negative = vec![cli.negative.as_str(); refs.len()];
    let config = GenerateConfig::new()
        .with_steps(cli.steps)
        .with_guidance_scale(cli.guidance)
        .with_seed(cli.seed)
        .with_height(cli.height)
        .with_width(cli.width)
        .with_max_sequence_length(cli.max_sequence_length);
    let location = ModelLocation::resolve(
        &cli.pipeline,
        cli.revision.as_deref(),
        None,
        "model_index.json",
    )?;
    let folder = PipelineFolder::open(&location.root)?;
    let variant = cli.variant.as_deref();
    let started = std::time::Instant::now();
    let generated = if SD_CLASSES.contains(&folder.class.as_str()) {
        let mut pipe = StableDiffusion::<B>::from_pretrained(&location, variant, device)?;
        if let Some(lora) = &cli.lora {
            let config = LoraConfig::unet_default().with_rank(cli.rank);
            pipe.unet = with_lora(pipe.unet, &config, lora)?;
            let parts = peft_components(lora)?;
            if parts.contains("text_encoder") {
                pipe.text_encoder = with_text_lora(pipe.text_encoder, lora, "text_encoder.")?;
            }
        }
        println!("loaded {} in {:.1?}", cli.pipeline, started.elapsed());
        pipe.generate(&refs, Some(&negative), &config, None)?
    } else if SD3_CLASSES.contains(&folder.class.as_str()) {
        let mut pipe = StableDiffusion3::<B>::from_pretrained(&location, variant, device)?;
        if let Some(lora) = &cli.lora {
            let config = LoraConfig::mmdit_default().with_rank(cli.rank);
            pipe.transformer = with_lora(pipe.transformer, &config, lora)?;
            let parts = peft_components(lora)?;
            let encoders = &mut pipe.text_encoders;
            if parts.contains("text_encoder") {
                let clip = encoders.text_encoder.clone();
                encoders.text_encoder = with_text_lora(clip, lora, "text_encoder.")?;
            }
            if parts.contains("text_encoder_2") {
                let clip = encoders.text_encoder_2.clone();
                encoders.text_encoder_2 = with_text_lora(clip, lora, "text_encoder_2.")?;
            }
        }
        println!("loaded {} in {:.1?}", cli.pipeline, started.elapsed());
        pipe.generate(&refs, Some(&negative), &config, None)?
    } else {
        bail!(
            "{}: pipeline class {} is not supported (expected {} or {})",
            location.root.display(),
            folder.class,
            SD_CLASSES.join(", "),
            SD3_CLASSES.join(", ")
        );
    };
    for p in &generated.truncated {
        eprintln!("warning: prompt truncated to the tokenizer's length: {p:?}");
    }
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let images = tensor_to_images(generated.images.mul_scalar(2.0).sub_scalar(1.0))?;
    for (i, image) in images.iter().enumerate() {
        let path = cli.out.join(format!("{i:03}.png"));
        image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(cli.out.join("prompts.txt"), prompts.join("\n") + "\n")?;
    println!(
        "{} images in {} ({:.1?} in all)",
        images.len(),
        cli.out.display(),
        started.elapsed()
    );
    Ok(())
}

/// Loads the text-encoder adapters under `prefix` of a PEFT file into `model` (each of the
/// file's rank, scale 1: the export baked alpha / rank into `lora_B`) and merges them.
fn with_text_lora<B: burn::tensor::backend::Backend, M>(
    model: M,
    path: &Path,
    prefix: &str,
) -> Result<M>
where
    M: ctcal::lora::LoraTarget<B>,
{
    let (model, report) = import_peft(model, path, prefix)?;
    println!(
        "LoRA from {} on {prefix}: {} projections",
        path.display(),
        report.paths.len()
    );
    Ok(merge_lora(model))
}

/// Adds LoRA adapters to `model`, loads a PEFT file into them and merges them.
fn with_lora<B: burn::tensor::backend::Backend, M>(
    model: M,
    config: &LoraConfig,
    path: &Path,
) -> Result<M>
where
    M: ctcal::lora::LoraTarget<B>,
{
    let (model, _) = apply_lora(model, config, 0)?;
    let (model, report) = import_peft(model, path, M::PEFT_PREFIX)?;
    println!(
        "LoRA from {}: {} projections",
        path.display(),
        report.paths.len()
    );
    Ok(merge_lora(model))
}
