//! What the training step, the samplers and the pipelines need of a denoiser: one forward
//! that takes text conditioning and an attention hook ([`Denoiser`]), implemented by the UNet
//! and the MMDiT, and the conditioning itself ([`TextCond`]).

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::attention::{AttentionHook, AttentionKind};
use crate::error::Result;

/// Text conditioning of a batch.
#[derive(Debug, Clone)]
pub struct TextCond<B: Backend> {
    /// Per-token embeddings `[batch, tokens, dim]`.
    pub hidden: Tensor<B, 3>,
    /// Pooled embedding `[batch, dim]` (SD 3); `None` for the UNet.
    pub pooled: Option<Tensor<B, 2>>,
}

impl<B: AutodiffBackend> TextCond<B> {
    /// The same tensors on the inner backend (no graph).
    pub fn inner(&self) -> TextCond<B::InnerBackend> {
        TextCond {
            hidden: self.hidden.clone().inner(),
            pooled: self.pooled.clone().map(Tensor::inner),
        }
    }
}

/// A text-conditioned denoiser whose attention layers take a hook: the UNet and the MMDiT.
pub trait Denoiser<B: Backend> {
    /// Predicts the target at `timesteps` (the values the model is fed: DDPM steps, or
    /// `1000 * sigma` for flow models).
    ///
    /// # Shapes
    /// - `x`: `[batch, c, h, w]`, `timesteps`: `[batch]`, returns `[batch, c, h, w]`
    fn denoise<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<Tensor<B, 4>>;

    /// Offers the attention layers to `hook` as [`denoise`](Self::denoise) does, for a pass
    /// that only reads maps (CTCal's teacher): an implementation may stop after the last site
    /// the hook wants (the UNet and the MMDiT stop after its block); the maps are the same. The
    /// default runs `denoise`.
    fn capture_maps<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &TextCond<B>,
        hook: &mut H,
    ) -> Result<()> {
        self.denoise(x, timesteps, cond, hook).map(|_| ())
    }

    /// The kind of attention whose maps CTCal supervises.
    fn map_kind(&self) -> AttentionKind;
}
