//! diffusers' `JointTransformerBlock`: adaLN-Zero modulated joint attention and MLPs on the
//! image and text streams; SD 3.5's dual attention adds an image-only attention.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use super::attention::JointAttention;
use super::norm::{AdaLayerNormContinuous, AdaLayerNormZero, NORM_EPS, gated, modulate};
use crate::attention::{Attention, AttentionBackend, AttentionHook};
use crate::nn::{FeedForward, layer_norm};

/// The text stream's first norm: adaLN-Zero, or in the last block (which only feeds the text
/// stream into the attention) a continuous adaptive norm.
#[derive(Module, Debug)]
pub enum ContextNorm<B: Backend> {
    /// `AdaLayerNormZero` (6 modulation vectors).
    Zero(AdaLayerNormZero<B>),
    /// `AdaLayerNormContinuous` (`context_pre_only` blocks).
    Continuous(AdaLayerNormContinuous<B>),
}

/// One MMDiT block (`transformer_blocks.{i}`).
#[derive(Module, Debug)]
pub struct JointTransformerBlock<B: Backend> {
    /// Image-stream adaLN-Zero (9-way with dual attention).
    pub norm1: AdaLayerNormZero<B>,
    /// Text-stream first norm.
    pub norm1_context: ContextNorm<B>,
    /// Joint attention.
    pub attn: JointAttention<B>,
    /// Image-only self-attention of SD 3.5's dual-attention blocks.
    pub attn2: Option<Attention<B>>,
    /// Image-stream MLP (tanh GELU).
    pub ff: FeedForward<B>,
    /// Text-stream MLP; absent in the last block.
    pub ff_context: Option<FeedForward<B>>,
}

impl<B: AttentionBackend> JointTransformerBlock<B> {
    /// Runs the block.
    ///
    /// # Shapes
    /// - `x`: `[batch, grid_h * grid_w, dim]`, `context`: `[batch, n_text, dim]`,
    ///   `temb`: `[batch, dim]`
    /// - returns the new image stream and, unless this is the last block, the new text stream.
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        grid: [usize; 2],
        hook: &mut H,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let m = self.norm1.forward(x.clone(), temb.clone());
        let (ctx_input, ctx_mod) = match &self.norm1_context {
            ContextNorm::Zero(norm) => {
                let cm = norm.forward(context.clone(), temb);
                (cm.attn_input.clone(), Some(cm))
            }
            ContextNorm::Continuous(norm) => (norm.forward(context.clone(), temb), None),
        };

        // Joint attention, then the dual image-only attention on the updated stream.
        let (attn_out, ctx_attn_out) =
            self.attn
                .forward(m.attn_input.clone(), ctx_input, grid, hook);
        let mut x = x + gated(attn_out, &m.gate_msa);
        if let (Some(attn2), Some((input2, gate2))) = (&self.attn2, &m.dual) {
            x = x + gated(attn2.forward(input2.clone(), None, grid, hook), gate2);
        }
        let h = modulate(layer_norm(x.clone(), NORM_EPS), &m.shift_mlp, &m.scale_mlp);
        let x = x + gated(self.ff.forward(h), &m.gate_mlp);

        // Text stream (absent after the last block).
        let context = match (ctx_mod, ctx_attn_out, &self.ff_context) {
            (Some(cm), Some(ctx_attn_out), Some(ff)) => {
                let c = context + gated(ctx_attn_out, &cm.gate_msa);
                let h = modulate(
                    layer_norm(c.clone(), NORM_EPS),
                    &cm.shift_mlp,
                    &cm.scale_mlp,
                );
                Some(c + gated(ff.forward(h), &cm.gate_mlp))
            }
            _ => None,
        };
        (x, context)
    }
}
