//! The shapes models: a tiny CLIP-style text encoder over the word vocabulary and a tiny
//! pixel-space denoiser (32x32 RGB, no VAE), either SD 3's MMDiT or SD 2.1's UNet, trained
//! together from scratch by the shapes benchmark (`shapes/` in the repository).

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::arch::ShapesArch;
use super::vocab::{SEQ_LEN, Vocab};
use crate::attention::{AttentionBackend, AttentionHook, AttentionKind};
use crate::config::ConfigFile;
use crate::denoiser::{Denoiser, TextCond};
use crate::error::Error;
use crate::lora::{LoraLinear, LoraTarget};
use crate::mmdit::{SD3Transformer2DConfig, SD3Transformer2DModel};
use crate::text::clip::ClipActivation;
use crate::text::{ClipTextConfig, ClipTextModel};
use crate::train::{load_params, save_params};
use crate::unet::{DownBlockType, UNet2DConditionConfig, UNet2DConditionModel, UpBlockType};

/// The denoiser half's config: which architecture, with its diffusers config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShapesDenoiserConfig {
    /// SD 3's `SD3Transformer2DModel`.
    Mmdit(SD3Transformer2DConfig),
    /// SD 2.1's `UNet2DConditionModel`.
    Unet(UNet2DConditionConfig),
}

/// The two halves' configs (what `base_config.json` holds beside a model's weights).
#[derive(Config, Debug)]
pub struct ShapesModelConfig {
    /// The text encoder (its `vocab_size` must be the vocabulary's).
    pub text: ClipTextConfig,
    /// The pixel-space denoiser (3 input and output channels).
    pub denoiser: ShapesDenoiserConfig,
}

/// Width of the tiny models' text encoder (and of the conditioning the denoisers take).
const TEXT_WIDTH: usize = 64;

fn tiny_text() -> ClipTextConfig {
    let vocab = Vocab::default();
    ClipTextConfig::new()
        .with_vocab_size(vocab.len())
        .with_hidden_size(TEXT_WIDTH)
        .with_intermediate_size(4 * TEXT_WIDTH)
        .with_projection_dim(TEXT_WIDTH)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(2)
        .with_max_position_embeddings(SEQ_LEN)
        .with_hidden_act(ClipActivation::Gelu)
        .with_bos_token_id(vocab.bos())
        .with_eos_token_id(vocab.eos())
        .with_pad_token_id(vocab.pad())
}

impl ShapesModelConfig {
    /// 2 text layers of width 64; an MMDiT of 4 blocks, 4 heads of 16, patch 2 on 32x32 RGB
    /// (256 image tokens, 16 text tokens).
    pub fn tiny_mmdit() -> Self {
        let denoiser = SD3Transformer2DConfig::new()
            .with_sample_size(32)
            .with_patch_size(2)
            .with_in_channels(3)
            .with_out_channels(3)
            .with_num_layers(4)
            .with_attention_head_dim(16)
            .with_num_attention_heads(4)
            .with_joint_attention_dim(TEXT_WIDTH)
            .with_caption_projection_dim(TEXT_WIDTH)
            .with_pooled_projection_dim(TEXT_WIDTH)
            .with_pos_embed_max_size(16);
        Self {
            text: tiny_text(),
            denoiser: ShapesDenoiserConfig::Mmdit(denoiser),
        }
    }

    /// The same text encoder and an SD 2.1-style UNet on 32x32 RGB: channels 32, 64, 64;
    /// cross-attention down blocks at 32x32 and 16x16, a plain one at 8x8, the cross-attention
    /// mid block at 8x8 and the mirrored up blocks; one resnet per block, linear projections.
    pub fn tiny_unet() -> Self {
        use DownBlockType::*;
        use UpBlockType::*;
        let denoiser = UNet2DConditionConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D],
            up_block_types: vec![CrossAttnUpBlock2D, CrossAttnUpBlock2D, UpBlock2D],
            block_out_channels: vec![32, 64, 64],
            layers_per_block: vec![1, 1, 1],
            transformer_layers_per_block: vec![1, 1, 1],
            norm_num_groups: 8,
            cross_attention_dim: TEXT_WIDTH,
            num_attention_heads: vec![2, 4, 4],
            upcast_attention: false,
            sample_size: 32,
            ..UNet2DConditionConfig::tiny()
        };
        Self {
            text: tiny_text(),
            denoiser: ShapesDenoiserConfig::Unet(denoiser),
        }
    }

    /// The tiny base model of `arch` ([`tiny_mmdit`](Self::tiny_mmdit) or
    /// [`tiny_unet`](Self::tiny_unet)).
    pub fn tiny(arch: ShapesArch) -> Self {
        match arch {
            ShapesArch::Mmdit => Self::tiny_mmdit(),
            ShapesArch::Unet => Self::tiny_unet(),
        }
    }

    /// The architecture of the denoiser.
    pub fn arch(&self) -> ShapesArch {
        match self.denoiser {
            ShapesDenoiserConfig::Mmdit(_) => ShapesArch::Mmdit,
            ShapesDenoiserConfig::Unet(_) => ShapesArch::Unet,
        }
    }

    /// Builds both halves with burn's default initialisation; fails when the text width does
    /// not match what the denoiser is conditioned on.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<ShapesModel<B>> {
        self.text.validate()?;
        let width = self.text.hidden_size;
        let denoiser = match &self.denoiser {
            ShapesDenoiserConfig::Mmdit(c) => {
                c.validate()?;
                if width != c.joint_attention_dim || width != c.pooled_projection_dim {
                    return Err(Error::Config(format!(
                        "shapes model: text width {width} must equal the MMDiT's \
                         joint_attention_dim {} and pooled_projection_dim {}",
                        c.joint_attention_dim, c.pooled_projection_dim
                    )));
                }
                ShapesDenoiser::Mmdit(c.init(device))
            }
            ShapesDenoiserConfig::Unet(c) => {
                c.validate()?;
                if width != c.cross_attention_dim {
                    return Err(Error::Config(format!(
                        "shapes model: text width {width} must equal the UNet's \
                         cross_attention_dim {}",
                        c.cross_attention_dim
                    )));
                }
                ShapesDenoiser::Unet(c.init(device))
            }
        };
        Ok(ShapesModel {
            text: self.text.init(device),
            denoiser,
        })
    }

    /// Reads a `base_config.json` written by [`ShapesModel::save_dir`].
    pub fn read(path: &Path) -> crate::Result<Self> {
        ConfigFile::read(path)?.deserialize()
    }

    /// The denoiser's image side in pixels (its `sample_size`).
    pub fn sample_size(&self) -> usize {
        match &self.denoiser {
            ShapesDenoiserConfig::Unet(c) => c.sample_size,
            ShapesDenoiserConfig::Mmdit(c) => c.sample_size,
        }
    }
}

/// The pixel-space denoiser of a shapes model. Its parameter paths are the diffusers paths of
/// the model inside (the variant name is not part of them).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model; boxing would hide the module from derive
pub enum ShapesDenoiser<B: Backend> {
    /// SD 3's MMDiT, trained on rectified flow.
    Mmdit(SD3Transformer2DModel<B>),
    /// SD 2.1's UNet, trained on SD 2.1's DDPM schedule with v-prediction.
    Unet(UNet2DConditionModel<B>),
}

impl<B: Backend> ShapesDenoiser<B> {
    /// Which architecture this is.
    pub fn arch(&self) -> ShapesArch {
        match self {
            Self::Mmdit(_) => ShapesArch::Mmdit,
            Self::Unet(_) => ShapesArch::Unet,
        }
    }
}

impl<B: AttentionBackend> Denoiser<B> for ShapesDenoiser<B> {
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> crate::Result<Tensor<B, 4>> {
        match self {
            Self::Mmdit(m) => m.denoise(x, timesteps, cond, hook),
            Self::Unet(m) => m.denoise(x, timesteps, cond, hook),
        }
    }

    fn map_kind(&self) -> AttentionKind {
        match self {
            Self::Mmdit(m) => m.map_kind(),
            Self::Unet(m) => m.map_kind(),
        }
    }
}

impl<B: Backend> LoraTarget<B> for ShapesDenoiser<B> {
    /// Not exported to diffusers (the shapes models have no pipeline); the MMDiT's prefix.
    const PEFT_PREFIX: &'static str = "transformer.";

    fn map_lora(self, f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        match self {
            Self::Mmdit(m) => Self::Mmdit(m.map_lora(f)),
            Self::Unet(m) => Self::Unet(m.map_lora(f)),
        }
    }

    fn visit_lora(&self, f: &mut impl FnMut(&str, &LoraLinear<B>)) {
        match self {
            Self::Mmdit(m) => m.visit_lora(f),
            Self::Unet(m) => m.visit_lora(f),
        }
    }
}

/// Text encoder and denoiser as one module (one optimiser, one file).
#[derive(Module, Debug)]
pub struct ShapesModel<B: Backend> {
    /// Word-level CLIP-style encoder: hidden states condition, the end token's row pools.
    pub text: ClipTextModel<B>,
    /// Pixel-space MMDiT or UNet.
    pub denoiser: ShapesDenoiser<B>,
}

impl<B: AttentionBackend> ShapesModel<B> {
    /// Conditioning for encoded captions (`[batch, SEQ_LEN]` ids, see [`Vocab::encode`]).
    pub fn encode(&self, ids: &[Vec<usize>], device: &B::Device) -> crate::Result<TextCond<B>> {
        encode_ids(&self.text, ids, device)
    }
}

/// [`ShapesModel::encode`] with the text encoder alone.
pub(crate) fn encode_ids<B: AttentionBackend>(
    text: &ClipTextModel<B>,
    ids: &[Vec<usize>],
    device: &B::Device,
) -> crate::Result<TextCond<B>> {
    let batch = ids.len();
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    if flat.len() != batch * SEQ_LEN {
        return Err(Error::Input(format!(
            "shapes model: {} ids for {batch} captions of {SEQ_LEN}",
            flat.len()
        )));
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, SEQ_LEN]), device);
    let out = text.forward(ids, false)?;
    Ok(TextCond {
        hidden: out.last_hidden_state,
        pooled: Some(out.pooler_output),
    })
}

/// File names of a model folder.
const WEIGHTS: &str = "base.safetensors";
pub(super) const CONFIG: &str = "base_config.json";

impl<B: Backend> ShapesModel<B> {
    /// Which architecture the denoiser is.
    pub fn arch(&self) -> ShapesArch {
        self.denoiser.arch()
    }

    /// Writes the parameters to `path` (safetensors, burn paths) through a temporary file.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        save_params(self, path, |_, _| true)
    }

    /// Loads parameters written by [`save`](Self::save).
    pub fn load(self, path: &Path) -> crate::Result<Self> {
        load_params(self, path, |_, _| true)
    }

    /// Writes `base.safetensors` and `base_config.json` (`config` must be this model's) into
    /// `dir`, each through a temporary file.
    pub fn save_dir(&self, config: &ShapesModelConfig, dir: &Path) -> crate::Result<()> {
        if config.arch() != self.arch() {
            return Err(Error::Config(format!(
                "shapes model: saving a {} with a {} config",
                self.arch(),
                config.arch()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.save(&dir.join(WEIGHTS))?;
        let json = serde_json::to_string_pretty(config)
            .map_err(|e| Error::Config(format!("shapes model config: {e}")))?;
        crate::weights::write_atomic(&dir.join(CONFIG), json.as_bytes())
    }
}

/// Builds the model that `dir/base_config.json` describes and loads `dir/base.safetensors`.
pub fn load_shapes_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> crate::Result<ShapesModel<B>> {
    ShapesModelConfig::read(&dir.join(CONFIG))?.load_weights(dir, device)
}

impl ShapesModelConfig {
    /// Builds this model and loads `dir/base.safetensors` into it.
    pub fn load_weights<B: Backend>(
        &self,
        dir: &Path,
        device: &B::Device,
    ) -> crate::Result<ShapesModel<B>> {
        self.init::<B>(device)?.load(&dir.join(WEIGHTS))
    }
}
