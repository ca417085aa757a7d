//! The SD 3 denoiser: diffusers' `SD3Transformer2DModel` (`transformer_sd3.py`), an MMDiT.
//!
//! Latent patches and text tokens run through [`JointTransformerBlock`]s that attend jointly
//! over `[image ; text]`; every joint attention offers the hook passed to
//! [`SD3Transformer2DModel::forward_with_hook`] its image-to-text probabilities. Field names
//! are the state-dict segments, so diffusers checkpoints load with [`crate::weights`].

mod attention;
mod block;
mod config;
mod embed;
mod norm;

pub use attention::JointAttention;
pub use block::{ContextNorm, JointTransformerBlock};
pub use config::{QkNorm, SD3Transformer2DConfig};
pub use embed::{CombinedTimestepTextProjEmbeddings, PatchEmbed, sincos_table};
pub use norm::{AdaLayerNormContinuous, AdaLayerNormZero, Modulation};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::attention::{
    AttentionBackend, AttentionConfig, AttentionHook, AttentionKind, AttentionSite, BlockPos,
    NoHook, Slot,
};
use crate::denoiser::{Denoiser, TextCond};
use crate::error::{Error, Result};
use crate::nn::{FeedForwardActivation, FeedForwardConfig};
use crate::precision::{cast_to, upcast};
use norm::NORM_EPS;

/// diffusers' `SD3Transformer2DModel` (SD 3 and SD 3.5 layouts).
#[derive(Module, Debug)]
pub struct SD3Transformer2DModel<B: Backend> {
    /// Patchify convolution and position table.
    pub pos_embed: PatchEmbed<B>,
    /// Timestep plus pooled-text conditioning.
    pub time_text_embed: CombinedTimestepTextProjEmbeddings<B>,
    /// Text embeddings to the model width.
    pub context_embedder: Linear<B>,
    /// The joint blocks; the last one is `context_pre_only`.
    pub transformer_blocks: Vec<JointTransformerBlock<B>>,
    /// Output adaptive norm.
    pub norm_out: AdaLayerNormContinuous<B>,
    /// Tokens to `patch * patch * out_channels` values.
    pub proj_out: Linear<B>,
    /// Latent channels expected on input.
    pub in_channels: usize,
    /// Latent channels produced.
    pub out_channels: usize,
    /// Width of `encoder_hidden_states`.
    pub joint_attention_dim: usize,
    /// Width of `pooled_projections`.
    pub pooled_projection_dim: usize,
    /// Every attention layer, in forward order.
    pub sites: Vec<AttentionSite>,
}

impl SD3Transformer2DConfig {
    /// Builds the model with burn's default initialisation (load weights with
    /// [`crate::weights`]). Call [`Self::validate`] first on configs from users.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SD3Transformer2DModel<B> {
        let dim = self.inner_dim();
        let (heads, head_dim) = (self.num_attention_heads, self.attention_head_dim);
        let qk_eps = self.qk_norm.map(|_| NORM_EPS);
        let mut sites = Vec::new();
        let mut site = |kind, slot, t| {
            let s = AttentionSite {
                index: sites.len(),
                kind,
                heads,
                downscale: self.patch_size,
                block: BlockPos::Flat,
                attention: 0,
                transformer_block: t,
                slot,
            };
            sites.push(s);
            s
        };
        let ff =
            || FeedForwardConfig::new(dim, 4 * dim, FeedForwardActivation::GeluTanh).init(device);
        let mut transformer_blocks = Vec::with_capacity(self.num_layers);
        for i in 0..self.num_layers {
            let last = i + 1 == self.num_layers;
            let dual = self.dual_attention_layers.contains(&i);
            let joint = site(AttentionKind::Joint, Slot::Attn, i);
            let attn = JointAttention::new(dim, heads, head_dim, last, qk_eps, joint, device);
            let attn2 = dual.then(|| {
                AttentionConfig::new(dim, heads, head_dim)
                    .with_bias(true)
                    .with_qk_norm_eps(qk_eps)
                    .init(site(AttentionKind::SelfAttention, Slot::Attn2, i), device)
            });
            transformer_blocks.push(JointTransformerBlock {
                norm1: AdaLayerNormZero::new(dim, dual, device),
                norm1_context: if last {
                    ContextNorm::Continuous(AdaLayerNormContinuous::new(dim, dim, device))
                } else {
                    ContextNorm::Zero(AdaLayerNormZero::new(dim, false, device))
                },
                attn,
                attn2,
                ff: ff(),
                ff_context: (!last).then(ff),
            });
        }
        let p = self.patch_size;
        SD3Transformer2DModel {
            pos_embed: PatchEmbed::new(
                self.in_channels,
                dim,
                p,
                self.pos_embed_max_size,
                self.sample_size / p,
                device,
            ),
            time_text_embed: CombinedTimestepTextProjEmbeddings::new(
                dim,
                self.pooled_projection_dim,
                device,
            ),
            context_embedder: LinearConfig::new(
                self.joint_attention_dim,
                self.caption_projection_dim,
            )
            .init(device),
            transformer_blocks,
            norm_out: AdaLayerNormContinuous::new(dim, dim, device),
            proj_out: LinearConfig::new(dim, p * p * self.out_channels).init(device),
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            joint_attention_dim: self.joint_attention_dim,
            pooled_projection_dim: self.pooled_projection_dim,
            sites,
        }
    }
}

impl<B: AttentionBackend> SD3Transformer2DModel<B> {
    /// Predicts the flow velocity (`noise - x0`).
    ///
    /// # Shapes
    /// - `hidden_states`: `[batch, in_channels, h * p, w * p]` with `h, w <= pos_embed_max_size`
    /// - `timesteps`: `[batch]` (`1000 * sigma`)
    /// - `encoder_hidden_states`: `[batch, tokens, joint_attention_dim]`
    /// - `pooled_projections`: `[batch, pooled_projection_dim]`
    /// - returns `[batch, out_channels, h * p, w * p]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        pooled_projections: Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        self.forward_with_hook(
            hidden_states,
            timesteps,
            encoder_hidden_states,
            pooled_projections,
            &mut NoHook,
        )
    }

    /// As [`Self::forward`], offering every attention layer to `hook`.
    pub fn forward_with_hook<H: AttentionHook<B>>(
        &self,
        hidden_states: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        pooled_projections: Tensor<B, 2>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        self.run(
            hidden_states,
            timesteps,
            encoder_hidden_states,
            pooled_projections,
            hook,
            None,
        )
        .expect("a forward without a stop reaches the output")
    }

    /// Offers the attention layers to `hook` in forward order and stops after the transformer
    /// block that holds the last site it [wants](AttentionHook::wants): what a pass that only
    /// reads maps needs (CTCal's teacher). The maps are those of [`Self::forward_with_hook`].
    /// Runs nothing when `hook` wants no site.
    pub fn capture_with_hook<H: AttentionHook<B>>(
        &self,
        hidden_states: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        pooled_projections: Tensor<B, 2>,
        hook: &mut H,
    ) {
        if let Some(last) = self.sites.iter().rposition(|site| hook.wants(site)) {
            let block = self.sites[last].transformer_block;
            self.run(
                hidden_states,
                timesteps,
                encoder_hidden_states,
                pooled_projections,
                hook,
                Some(block),
            );
        }
    }

    /// The forward; with `stop_after = Some(i)` it returns `None` right after transformer
    /// block `i`.
    fn run<H: AttentionHook<B>>(
        &self,
        hidden_states: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        pooled_projections: Tensor<B, 2>,
        hook: &mut H,
        stop_after: Option<usize>,
    ) -> Option<Tensor<B, 4>> {
        let [b, _, height, width] = hidden_states.dims();
        let p = self.patch_size();
        let grid = [height / p, width / p];
        let mut x = self.pos_embed.forward(hidden_states);
        let temb = self.time_text_embed.forward(timesteps, pooled_projections);
        let mut context = Some(self.context_embedder.forward(encoder_hidden_states));
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            let ctx = context
                .take()
                .expect("only the last block drops the text stream");
            (x, context) = block.forward(x, ctx, temb.clone(), grid, hook);
            if stop_after == Some(i) {
                return None;
            }
        }
        let x = self.proj_out.forward(self.norm_out.forward(x, temb));
        // [b, h*w, p*p*c] -> [b, h, w, p, q, c] -> [b, c, h, p, w, q] (diffusers' einsum).
        let c = self.out_channels;
        Some(
            x.reshape([b, grid[0], grid[1], p, p, c])
                .permute([0, 5, 1, 3, 2, 4])
                .reshape([b, c, height, width]),
        )
    }
}

impl<B: Backend> SD3Transformer2DModel<B> {
    /// Every attention layer (joint `attn`, dual `attn2`), in forward order.
    pub fn sites(&self) -> &[AttentionSite] {
        &self.sites
    }

    /// The [`Denoiser`] inputs checked (pooled embeddings required) and in the parameters'
    /// type: the sample, the text's hidden states and the pooled embeddings.
    fn denoiser_inputs(
        &self,
        x: Tensor<B, 4>,
        timesteps: [usize; 1],
        cond: &TextCond<B>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 2>)> {
        let pooled = cond.pooled.clone().ok_or_else(|| {
            Error::Input(
                "the SD 3 transformer needs pooled text embeddings (TextCond::pooled)".into(),
            )
        })?;
        self.check_inputs(x.dims(), timesteps, cond.hidden.dims(), pooled.dims())?;
        let dtype = self.pos_embed.proj.weight.val().dtype();
        Ok((
            cast_to(x, dtype),
            cast_to(cond.hidden.clone(), dtype),
            cast_to(pooled, dtype),
        ))
    }

    /// Side of the patches.
    pub fn patch_size(&self) -> usize {
        self.pos_embed.patch_size
    }

    /// Checks input shapes against the model, naming the offending tensor and shape.
    pub fn check_inputs(
        &self,
        hidden_states: [usize; 4],
        timesteps: [usize; 1],
        encoder_hidden_states: [usize; 3],
        pooled_projections: [usize; 2],
    ) -> Result<()> {
        let (p, max) = (self.patch_size(), self.pos_embed.max_size);
        let [b, c, h, w] = hidden_states;
        if c != self.in_channels || h == 0 || w == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p)
        {
            return Err(Error::Input(format!(
                "hidden_states has shape {hidden_states:?}, expected [batch, {}, height, width] \
                 with height and width multiples of the patch size {p}",
                self.in_channels
            )));
        }
        if h / p > max || w / p > max {
            return Err(Error::Input(format!(
                "hidden_states has shape {hidden_states:?}: {}x{} patches exceed the \
                 position table's {max}x{max} (pos_embed_max_size)",
                h / p,
                w / p
            )));
        }
        if timesteps[0] != b && timesteps[0] != 1 {
            return Err(Error::Input(format!(
                "timestep has shape {timesteps:?}, expected [{b}] or [1]"
            )));
        }
        let [eb, et, ed] = encoder_hidden_states;
        if eb != b || et == 0 || ed != self.joint_attention_dim {
            return Err(Error::Input(format!(
                "encoder_hidden_states has shape {encoder_hidden_states:?}, expected [{b}, tokens, {}]",
                self.joint_attention_dim
            )));
        }
        if pooled_projections != [b, self.pooled_projection_dim] {
            return Err(Error::Input(format!(
                "pooled_projections has shape {pooled_projections:?}, expected [{b}, {}]",
                self.pooled_projection_dim
            )));
        }
        Ok(())
    }
}

/// The MMDiT as a [`Denoiser`]: needs pooled embeddings; inputs cast to the parameters' type, the prediction returned wide.
impl<B: AttentionBackend> Denoiser<B> for SD3Transformer2DModel<B> {
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>> {
        let (x, hidden, pooled) = self.denoiser_inputs(x, timesteps.dims(), cond)?;
        Ok(upcast(
            self.forward_with_hook(x, timesteps, hidden, pooled, hook),
        ))
    }

    /// Stops after the block of the last wanted site ([`Self::capture_with_hook`]).
    fn capture_maps<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<()> {
        let (x, hidden, pooled) = self.denoiser_inputs(x, timesteps.dims(), cond)?;
        self.capture_with_hook(x, timesteps, hidden, pooled, hook);
        Ok(())
    }

    fn map_kind(&self) -> AttentionKind {
        AttentionKind::Joint
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod capture_tests;
