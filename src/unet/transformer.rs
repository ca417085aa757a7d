//! `Transformer2DModel` (continuous input) and `BasicTransformerBlock` (diffusers
//! `transformer_2d.py`, `attention.py`), as SD 1.x/2.x use them.

use crate::precision::in_accumulation;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::attention::{
    Attention, AttentionBackend, AttentionConfig, AttentionHook, AttentionKind, AttentionSite,
    BlockPos, Slot,
};
use crate::nn::{
    FeedForward, FeedForwardActivation, FeedForwardConfig, conv2d, group_norm, linear,
};

/// Where a `Transformer2DModel` sits, to name its attention sites.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerPlace {
    pub block: BlockPos,
    pub attention: usize,
    pub downscale: usize,
}

/// Self-attention, cross-attention to the text, GEGLU feed-forward; pre-LayerNorm residuals.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// Norm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// Norm before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Cross-attention to `encoder_hidden_states`.
    pub attn2: Attention<B>,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// GEGLU feed-forward (`ff.net.0.proj`, `ff.net.2`).
    pub ff: FeedForward<B>,
}

impl<B: AttentionBackend> BasicTransformerBlock<B> {
    /// # Shapes
    /// - `x`: `[batch, h * w, dim]`, `context`: `[batch, tokens, cross_attention_dim]`
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        grid: [usize; 2],
        hook: &mut H,
    ) -> Tensor<B, 3> {
        let x = self.attn1.forward(
            in_accumulation(x.clone(), |x| self.norm1.forward(x)),
            None,
            grid,
            hook,
        ) + x;
        let x = self.attn2.forward(
            in_accumulation(x.clone(), |x| self.norm2.forward(x)),
            Some(context),
            grid,
            hook,
        ) + x;
        self.ff
            .forward(in_accumulation(x.clone(), |x| self.norm3.forward(x)))
            + x
    }
}

/// `proj_in`/`proj_out`: a `Linear` (SD 2) or a 1x1 `Conv2d` (SD 1).
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// `use_linear_projection = true`.
    Linear(Linear<B>),
    /// `use_linear_projection = false`.
    Conv(Conv2d<B>),
}

/// GroupNorm, `proj_in`, `transformer_blocks`, `proj_out`, plus the input as a residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// Input group norm (32 groups by config, epsilon 1e-6).
    pub norm: GroupNorm<B>,
    /// Projection into the token width.
    pub proj_in: Projection<B>,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Projection back to the channel width.
    pub proj_out: Projection<B>,
}

/// Arguments of [`Transformer2DModel::new`] that come from the UNet config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerArgs {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
    pub upcast_attention: bool,
}

impl<B: Backend> Transformer2DModel<B> {
    /// Builds the model, numbering its attention sites from `*next_site` on.
    pub(crate) fn new(
        args: TransformerArgs,
        place: TransformerPlace,
        next_site: &mut usize,
        device: &B::Device,
    ) -> Self {
        let c = args.channels;
        let projection = || {
            if args.linear_projection {
                Projection::Linear(LinearConfig::new(c, c).init(device))
            } else {
                Projection::Conv(Conv2dConfig::new([c, c], [1, 1]).init(device))
            }
        };
        let mut site = |kind, transformer_block, slot| {
            let s = AttentionSite {
                index: *next_site,
                kind,
                heads: args.heads,
                downscale: place.downscale,
                block: place.block,
                attention: place.attention,
                transformer_block,
                slot,
            };
            *next_site += 1;
            s
        };
        let attn = |cross: Option<usize>| {
            AttentionConfig::new(c, args.heads, c / args.heads)
                .with_cross_attention_dim(cross)
                .with_upcast_attention(args.upcast_attention)
        };
        let transformer_blocks = (0..args.layers)
            .map(|t| BasicTransformerBlock {
                norm1: LayerNormConfig::new(c).init(device),
                attn1: attn(None).init(site(AttentionKind::SelfAttention, t, Slot::Attn1), device),
                norm2: LayerNormConfig::new(c).init(device),
                attn2: attn(Some(args.cross_attention_dim))
                    .init(site(AttentionKind::Cross, t, Slot::Attn2), device),
                norm3: LayerNormConfig::new(c).init(device),
                ff: FeedForwardConfig::new(c, 4 * c, FeedForwardActivation::Geglu).init(device),
            })
            .collect();
        Self {
            norm: GroupNormConfig::new(args.groups, c)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: projection(),
            transformer_blocks,
            proj_out: projection(),
        }
    }
}

impl<B: AttentionBackend> Transformer2DModel<B> {
    /// Runs the block's transformer layers on the feature map.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`, `context`: `[batch, tokens, cross_attention_dim]`
    /// - returns `[batch, channels, h, w]`
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        context: Tensor<B, 3>,
        hook: &mut H,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = in_accumulation(x, |x| group_norm(&self.norm, x));
        // 1. To tokens: [b, c, h, w] -> [b, h * w, c], projecting before or after.
        let to_tokens = |x: Tensor<B, 4>| x.reshape([b, c, h * w]).swap_dims(1, 2);
        let mut tokens = match &self.proj_in {
            Projection::Linear(lin) => linear(lin, to_tokens(x)),
            Projection::Conv(conv) => to_tokens(conv2d(conv, x)),
        };
        // 2. Transformer blocks.
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone(), [h, w], hook);
        }
        // 3. Back to an image, projecting before or after.
        let to_image = |t: Tensor<B, 3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let out = match &self.proj_out {
            Projection::Linear(lin) => to_image(linear(lin, tokens)),
            Projection::Conv(conv) => conv2d(conv, to_image(tokens)),
        };
        out + residual
    }
}
