//! The SD 1.x/2.x denoiser: diffusers' `UNet2DConditionModel` (`unet_2d_condition.py`).
//!
//! Field names are the state-dict segments, so a diffusers checkpoint loads with the few rules
//! of [`crate::weights`]. Attention layers take the hook passed to
//! [`UNet2DConditionModel::forward_with_hook`].

mod blocks;
mod config;
mod resnet;
mod transformer;

pub use crate::nn::{Downsample2D, Upsample2D};
pub use blocks::{DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D};
pub use config::{DownBlockType, UNet2DConditionConfig, UpBlockType};
pub use resnet::ResnetBlock2D;
pub use transformer::{BasicTransformerBlock, Projection, Transformer2DModel};

use crate::nn::{conv2d, conv3x3, group_norm, silu_kernel};
use crate::precision::in_accumulation;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{FloatDType, Tensor, backend::Backend};

use crate::attention::{
    AttentionBackend, AttentionHook, AttentionKind, AttentionSite, BlockPos, NoHook,
};
use crate::denoiser::{Denoiser, TextCond};
use crate::error::{Error, Result};
use crate::nn::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};
use crate::precision::{cast_to, upcast};
use transformer::{TransformerArgs, TransformerPlace};

/// The parameter-free sinusoidal timestep features (diffusers `Timesteps`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeProj {
    /// Feature width (`block_out_channels[0]`).
    pub dim: usize,
    /// Cosine half first.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift`.
    pub freq_shift: f64,
}

/// diffusers' `UNet2DConditionModel` for SD 1.x/2.x configs.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Input convolution, latent channels to `block_out_channels[0]`.
    pub conv_in: Conv2d<B>,
    /// MLP over the sinusoidal timestep features.
    pub time_embedding: TimestepEmbedding<B>,
    /// Down path, top level first.
    pub down_blocks: Vec<DownBlock2D<B>>,
    /// Bottleneck.
    pub mid_block: UNetMidBlock2DCrossAttn<B>,
    /// Up path, bottom level first.
    pub up_blocks: Vec<UpBlock2D<B>>,
    /// Output group norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution to latent channels.
    pub conv_out: Conv2d<B>,
    /// Sinusoidal timestep feature settings (diffusers `time_proj`, parameter-free).
    pub time_proj: TimeProj,
    /// Latent channels expected on input.
    pub in_channels: usize,
    /// Width of the text conditioning expected on input.
    pub cross_attention_dim: usize,
    /// Every attention layer, in forward order.
    pub sites: Vec<AttentionSite>,
}

impl UNet2DConditionConfig {
    /// Builds the model with burn's default initialisation (load weights with
    /// [`crate::weights`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        let boc = &self.block_out_channels;
        let levels = boc.len();
        let temb = boc[0] * 4;
        let mut next_site = 0;
        let resnet = |cin, cout, scale| {
            ResnetBlock2D::new(
                cin,
                cout,
                temb,
                self.norm_num_groups,
                self.norm_eps,
                scale,
                device,
            )
        };
        let targs = |channels, level: usize| TransformerArgs {
            channels,
            heads: self.num_attention_heads[level],
            layers: self.transformer_layers_per_block[level],
            cross_attention_dim: self.cross_attention_dim,
            groups: self.norm_num_groups,
            linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        };

        // 1. Down path.
        let mut down_blocks = Vec::with_capacity(levels);
        let mut out_ch = boc[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let layers = self.layers_per_block[i];
            let resnets = (0..layers)
                .map(|j| resnet(if j == 0 { in_ch } else { out_ch }, out_ch, 1.0))
                .collect();
            let attentions = match kind {
                DownBlockType::CrossAttnDownBlock2D => (0..layers)
                    .map(|j| {
                        let place = TransformerPlace {
                            block: BlockPos::Down(i),
                            attention: j,
                            downscale: 1 << i,
                        };
                        Transformer2DModel::new(targs(out_ch, i), place, &mut next_site, device)
                    })
                    .collect(),
                DownBlockType::DownBlock2D => Vec::new(),
            };
            let downsamplers = if i + 1 < levels {
                vec![Downsample2D::new(out_ch, self.downsample_padding, device)]
            } else {
                Vec::new()
            };
            down_blocks.push(DownBlock2D {
                resnets,
                attentions,
                downsamplers,
            });
        }

        // 2. Mid block.
        let mid_ch = boc[levels - 1];
        let mid_place = TransformerPlace {
            block: BlockPos::Mid,
            attention: 0,
            downscale: 1 << (levels - 1),
        };
        let mid_attn =
            Transformer2DModel::new(targs(mid_ch, levels - 1), mid_place, &mut next_site, device);
        let mid_block = UNetMidBlock2DCrossAttn {
            resnets: vec![
                resnet(mid_ch, mid_ch, self.mid_block_scale_factor),
                resnet(mid_ch, mid_ch, self.mid_block_scale_factor),
            ],
            attentions: vec![mid_attn],
        };

        // 3. Up path: level `levels - 1 - i`, one more resnet than the down block.
        let mut up_blocks = Vec::with_capacity(levels);
        let mut out_ch = boc[levels - 1];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let level = levels - 1 - i;
            let prev_out = out_ch;
            out_ch = boc[level];
            let in_ch = boc[level.saturating_sub(1)];
            let layers = self.layers_per_block[level] + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { in_ch } else { out_ch };
                    let cin = if j == 0 { prev_out } else { out_ch };
                    resnet(cin + skip, out_ch, 1.0)
                })
                .collect();
            let attentions = match kind {
                UpBlockType::CrossAttnUpBlock2D => (0..layers)
                    .map(|j| {
                        let place = TransformerPlace {
                            block: BlockPos::Up(i),
                            attention: j,
                            downscale: 1 << level,
                        };
                        Transformer2DModel::new(targs(out_ch, level), place, &mut next_site, device)
                    })
                    .collect(),
                UpBlockType::UpBlock2D => Vec::new(),
            };
            let upsamplers = if i + 1 < levels {
                vec![Upsample2D::new(out_ch, device)]
            } else {
                Vec::new()
            };
            up_blocks.push(UpBlock2D {
                resnets,
                attentions,
                upsamplers,
            });
        }

        let mut model = UNet2DConditionModel {
            conv_in: conv3x3(self.in_channels, boc[0], 1, 1, device),
            time_embedding: TimestepEmbeddingConfig::new(boc[0], temb).init(device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_num_groups, boc[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv3x3(boc[0], self.out_channels, 1, 1, device),
            time_proj: TimeProj {
                dim: boc[0],
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
            },
            in_channels: self.in_channels,
            cross_attention_dim: self.cross_attention_dim,
            sites: Vec::new(),
        };
        model.sites = model.collect_sites();
        model
    }
}

impl<B: AttentionBackend> UNet2DConditionModel<B> {
    /// Predicts noise (or v) without hooks: every attention layer takes the fused path.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`
    /// - `timesteps`: `[batch]` (or `[1]`, broadcast), fractional values allowed
    /// - `encoder_hidden_states`: `[batch, tokens, cross_attention_dim]`
    /// - returns `[batch, out_channels, h, w]`
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.forward_with_hook(sample, timesteps, encoder_hidden_states, &mut NoHook)
    }

    /// As [`Self::forward`], offering every attention layer to `hook`.
    pub fn forward_with_hook<H: AttentionHook<B>>(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        self.run(sample, timesteps, encoder_hidden_states, hook, None)
            .expect("a forward without a stop reaches the output")
    }

    /// Offers the attention layers to `hook` in forward order and stops after the block that
    /// holds the last site it [wants](AttentionHook::wants): what a pass that only reads maps
    /// needs (CTCal's teacher). The layers after that block, and the output, are not computed;
    /// the maps are those of [`Self::forward_with_hook`]. Runs nothing when `hook` wants no site.
    pub fn capture_with_hook<H: AttentionHook<B>>(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        hook: &mut H,
    ) {
        if let Some(last) = self.sites.iter().rposition(|site| hook.wants(site)) {
            self.run(sample, timesteps, encoder_hidden_states, hook, Some(last));
        }
    }

    /// The forward; with `stop_after = Some(i)` it returns `None` right after the block that
    /// holds site `i` (an index into [`Self::sites`]).
    fn run<H: AttentionHook<B>>(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        hook: &mut H,
        stop_after: Option<usize>,
    ) -> Option<Tensor<B, 4>> {
        let batch = sample.dims()[0];
        let timesteps = if timesteps.dims()[0] == 1 && batch > 1 {
            timesteps.expand([batch])
        } else {
            timesteps
        };
        let ctx = encoder_hidden_states;
        // Sites offered so far; past the last wanted one the pass may stop.
        let mut offered = 0;
        let mut stop = |attentions: &[Transformer2DModel<B>]| {
            offered += block_sites(attentions);
            stop_after.is_some_and(|last| offered > last)
        };
        // 1. Time embedding.
        let TimeProj {
            dim,
            flip_sin_to_cos,
            freq_shift,
        } = self.time_proj;
        // Computed wide, then in the sample's type (diffusers: `t_emb.to(dtype=sample.dtype)`).
        let features = timestep_embedding(timesteps, dim, flip_sin_to_cos, freq_shift)
            .cast(FloatDType::from(sample.dtype()));
        let temb = self.time_embedding.forward(features);
        // 2. Down path, keeping every state for the skip connections.
        let mut x = conv2d(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, temb.clone(), ctx.clone(), &mut skips, hook);
            if stop(&block.attentions) {
                return None;
            }
        }
        // 3. Bottleneck.
        x = self.mid_block.forward(x, temb.clone(), ctx.clone(), hook);
        if stop(&self.mid_block.attentions) {
            return None;
        }
        // 4. Up path.
        for block in &self.up_blocks {
            x = block.forward(x, temb.clone(), ctx.clone(), &mut skips, hook);
            if stop(&block.attentions) {
                return None;
            }
        }
        // 5. Output.
        Some(conv2d(
            &self.conv_out,
            silu_kernel(in_accumulation(x, |x| group_norm(&self.conv_norm_out, x))),
        ))
    }
}

/// The attention sites of a block's transformers: two (self and cross) per transformer block,
/// in the order [`UNet2DConditionModel::sites`] lists them.
fn block_sites<B: Backend>(attentions: &[Transformer2DModel<B>]) -> usize {
    attentions
        .iter()
        .map(|t| 2 * t.transformer_blocks.len())
        .sum()
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Every attention layer, in forward order.
    pub fn sites(&self) -> &[AttentionSite] {
        &self.sites
    }

    /// Checks input shapes against the model, naming the offending tensor and shape.
    pub fn check_inputs(
        &self,
        sample: [usize; 4],
        timesteps: [usize; 1],
        encoder_hidden_states: [usize; 3],
    ) -> Result<()> {
        let (in_ch, ctx_dim) = (self.in_channels, self.cross_attention_dim);
        let [b, c, h, w] = sample;
        if c != in_ch || h == 0 || w == 0 {
            return Err(Error::Input(format!(
                "sample has shape {sample:?}, expected [batch, {in_ch}, height, width]"
            )));
        }
        if timesteps[0] != b && timesteps[0] != 1 {
            return Err(Error::Input(format!(
                "timestep has shape {timesteps:?}, expected [{b}] or [1]"
            )));
        }
        let [cb, _, cd] = encoder_hidden_states;
        if cb != b || cd != ctx_dim {
            return Err(Error::Input(format!(
                "encoder_hidden_states has shape {encoder_hidden_states:?}, expected [{b}, tokens, {ctx_dim}]"
            )));
        }
        Ok(())
    }

    /// The [`Denoiser`] inputs checked and in the parameters' type (bf16 for a `cast_params`
    /// copy): the sample and the text's hidden states.
    fn denoiser_inputs(
        &self,
        x: Tensor<B, 4>,
        timesteps: [usize; 1],
        cond: &TextCond<B>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
        self.check_inputs(x.dims(), timesteps, cond.hidden.dims())?;
        let dtype = self.conv_in.weight.val().dtype();
        Ok((cast_to(x, dtype), cast_to(cond.hidden.clone(), dtype)))
    }

    fn collect_sites(&self) -> Vec<AttentionSite> {
        let transformers = self
            .down_blocks
            .iter()
            .flat_map(|b| b.attentions.iter())
            .chain(self.mid_block.attentions.iter())
            .chain(self.up_blocks.iter().flat_map(|b| b.attentions.iter()));
        transformers
            .flat_map(|t| t.transformer_blocks.iter())
            .flat_map(|tb| [tb.attn1.site, tb.attn2.site])
            .collect()
    }
}

/// The UNet as a [`Denoiser`]: inputs cast to the parameters' type, the prediction returned wide.
impl<B: AttentionBackend> Denoiser<B> for UNet2DConditionModel<B> {
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>> {
        let (x, hidden) = self.denoiser_inputs(x, timesteps.dims(), cond)?;
        // The prediction wide.
        Ok(upcast(self.forward_with_hook(x, timesteps, hidden, hook)))
    }

    /// Stops after the block of the last wanted site ([`Self::capture_with_hook`]).
    fn capture_maps<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<()> {
        let (x, hidden) = self.denoiser_inputs(x, timesteps.dims(), cond)?;
        self.capture_with_hook(x, timesteps, hidden, hook);
        Ok(())
    }

    fn map_kind(&self) -> AttentionKind {
        AttentionKind::Cross
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod capture_tests;
