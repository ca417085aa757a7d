//! diffusers' `Attention` as SD 3 configures it for `JointAttnProcessor2_0`: image and text
//! streams with their own projections, attending jointly over `[image ; text]`.

use burn::module::Module;
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::attention::{AttentionBackend, AttentionHook, AttentionSite, attend_joint};
use crate::attention::{merge_heads, norm_heads, split_heads};
use crate::nn::LoraLinear;

/// Joint attention of one MMDiT block (`transformer_blocks.{i}.attn`).
///
/// Every projection is a [`LoraLinear`], built without an adapter (see [`crate::lora`]).
#[derive(Module, Debug)]
pub struct JointAttention<B: Backend> {
    /// Image-stream query projection.
    pub to_q: LoraLinear<B>,
    /// Image-stream key projection.
    pub to_k: LoraLinear<B>,
    /// Image-stream value projection.
    pub to_v: LoraLinear<B>,
    /// Text-stream query projection.
    pub add_q_proj: LoraLinear<B>,
    /// Text-stream key projection.
    pub add_k_proj: LoraLinear<B>,
    /// Text-stream value projection.
    pub add_v_proj: LoraLinear<B>,
    /// Image-stream output projection (`to_out.0`).
    pub to_out: Vec<LoraLinear<B>>,
    /// Text-stream output projection; absent in the last (`context_pre_only`) block.
    pub to_add_out: Option<LoraLinear<B>>,
    /// Per-head RMS norms of image queries and keys, text queries and keys (SD 3.5).
    pub norm_q: Option<RmsNorm<B>>,
    /// See [`Self::norm_q`].
    pub norm_k: Option<RmsNorm<B>>,
    /// See [`Self::norm_q`].
    pub norm_added_q: Option<RmsNorm<B>>,
    /// See [`Self::norm_q`].
    pub norm_added_k: Option<RmsNorm<B>>,
    /// Number of heads.
    pub heads: usize,
    /// Identity of this layer for hooks.
    pub site: AttentionSite,
}

impl<B: Backend> JointAttention<B> {
    /// Builds the layer (all projections with bias, as SD 3 has them).
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_pre_only: bool,
        qk_norm_eps: Option<f64>,
        site: AttentionSite,
        device: &B::Device,
    ) -> Self {
        let inner = heads * head_dim;
        let lin = |i: usize, o: usize| LoraLinear::new(LinearConfig::new(i, o).init(device));
        let norm =
            || qk_norm_eps.map(|eps| RmsNormConfig::new(head_dim).with_epsilon(eps).init(device));
        Self {
            to_q: lin(dim, inner),
            to_k: lin(dim, inner),
            to_v: lin(dim, inner),
            add_q_proj: lin(dim, inner),
            add_k_proj: lin(dim, inner),
            add_v_proj: lin(dim, inner),
            to_out: vec![lin(inner, dim)],
            to_add_out: (!context_pre_only).then(|| lin(inner, dim)),
            norm_q: norm(),
            norm_k: norm(),
            norm_added_q: norm(),
            norm_added_k: norm(),
            heads,
            site,
        }
    }
}

impl<B: AttentionBackend> JointAttention<B> {
    /// Attends jointly; returns the image stream's output and, unless `context_pre_only`, the
    /// text stream's.
    ///
    /// # Shapes
    /// - `x`: `[batch, grid_h * grid_w, dim]`, `context`: `[batch, n_text, dim]`
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        grid: [usize; 2],
        hook: &mut H,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [b, n_image, _] = x.dims();
        let n_text = context.dims()[1];
        let heads = self.heads;
        let q = Tensor::cat(
            vec![
                norm_heads(
                    &self.norm_q,
                    split_heads(self.to_q.forward(x.clone()), heads),
                ),
                norm_heads(
                    &self.norm_added_q,
                    split_heads(self.add_q_proj.forward(context.clone()), heads),
                ),
            ],
            2,
        );
        let k = Tensor::cat(
            vec![
                norm_heads(
                    &self.norm_k,
                    split_heads(self.to_k.forward(x.clone()), heads),
                ),
                norm_heads(
                    &self.norm_added_k,
                    split_heads(self.add_k_proj.forward(context.clone()), heads),
                ),
            ],
            2,
        );
        let v = Tensor::cat(
            vec![
                split_heads(self.to_v.forward(x), heads),
                split_heads(self.add_v_proj.forward(context), heads),
            ],
            2,
        );
        let out = merge_heads(attend_joint(q, k, v, n_image, &self.site, grid, hook));
        let width = out.dims()[2];
        let image = out.clone().slice([0..b, 0..n_image, 0..width]);
        let text = self
            .to_add_out
            .as_ref()
            .map(|proj| proj.forward(out.slice([0..b, n_image..n_image + n_text, 0..width])));
        (self.to_out[0].forward(image), text)
    }
}
