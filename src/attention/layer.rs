//! diffusers' `Attention` (self- or cross-attention with `to_q`, `to_k`, `to_v`, `to_out.0`).

use crate::precision::in_accumulation;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Tensor, backend::Backend};

use super::{AttentionBackend, AttentionHook, AttentionSite, attend};
use crate::nn::LoraLinear;

/// Configuration of an [`Attention`] layer (diffusers `Attention.__init__` arguments).
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the query stream (`query_dim`).
    pub query_dim: usize,
    /// Number of heads (`heads`).
    pub heads: usize,
    /// Width of one head (`dim_head`).
    pub dim_head: usize,
    /// Width of the key/value stream; `None` for self-attention (`cross_attention_dim`).
    pub cross_attention_dim: Option<usize>,
    /// Bias on `to_q`, `to_k`, `to_v` (`bias`; false in SD 1/2).
    #[config(default = false)]
    pub bias: bool,
    /// Bias on `to_out.0` (`out_bias`).
    #[config(default = true)]
    pub out_bias: bool,
    /// Softmax in f32 (`upcast_attention`; SD 2.1 768 needs it).
    #[config(default = false)]
    pub upcast_attention: bool,
    /// Per-head RMS norm of queries and keys with this epsilon (`qk_norm="rms_norm"`, SD 3.5).
    #[config(default = "None")]
    pub qk_norm_eps: Option<f64>,
}

/// Multi-head attention with diffusers' parameter names.
///
/// `to_out` is a one-element list so its weights are named `to_out.0.*`, as in diffusers
/// (where `to_out.1` is a parameter-free dropout). The projections are [`LoraLinear`]s,
/// built without adapters (see [`crate::lora`]).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub to_q: LoraLinear<B>,
    /// Key projection.
    pub to_k: LoraLinear<B>,
    /// Value projection.
    pub to_v: LoraLinear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Vec<LoraLinear<B>>,
    /// Per-head RMS norm of the queries (SD 3.5's `qk_norm`).
    pub norm_q: Option<RmsNorm<B>>,
    /// Per-head RMS norm of the keys.
    pub norm_k: Option<RmsNorm<B>>,
    /// Number of heads.
    pub heads: usize,
    /// Softmax in f32 for hooked sites.
    pub upcast: bool,
    /// Identity of this layer for hooks.
    pub site: AttentionSite,
}

impl AttentionConfig {
    /// Builds the layer for `site` with burn's default initialisation.
    pub fn init<B: Backend>(&self, site: AttentionSite, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let lin = |i: usize, o: usize, bias: bool| {
            LoraLinear::new(LinearConfig::new(i, o).with_bias(bias).init(device))
        };
        Attention {
            to_q: lin(self.query_dim, inner, self.bias),
            to_k: lin(kv_dim, inner, self.bias),
            to_v: lin(kv_dim, inner, self.bias),
            to_out: vec![lin(inner, self.query_dim, self.out_bias)],
            norm_q: self.qk_norm(device),
            norm_k: self.qk_norm(device),
            heads: self.heads,
            upcast: self.upcast_attention,
            site,
        }
    }
}

impl AttentionConfig {
    fn qk_norm<B: Backend>(&self, device: &B::Device) -> Option<RmsNorm<B>> {
        self.qk_norm_eps.map(|eps| {
            RmsNormConfig::new(self.dim_head)
                .with_epsilon(eps)
                .init(device)
        })
    }
}

impl<B: AttentionBackend> Attention<B> {
    /// Attends from `x` to `context` (or to `x` itself when `context` is `None`).
    ///
    /// # Shapes
    /// - `x`: `[batch, grid_h * grid_w, query_dim]`
    /// - `context`: `[batch, keys, cross_attention_dim]`
    /// - returns `[batch, grid_h * grid_w, query_dim]`
    pub fn forward<H: AttentionHook<B>>(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        grid: [usize; 2],
        hook: &mut H,
    ) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = norm_heads(&self.norm_q, split_heads(self.to_q.forward(x), self.heads));
        let k = split_heads(self.to_k.forward(context.clone()), self.heads);
        let k = norm_heads(&self.norm_k, k);
        let v = split_heads(self.to_v.forward(context), self.heads);
        let out = attend(q, k, v, &self.site, grid, self.upcast, hook);
        self.to_out[0].forward(merge_heads(out))
    }
}

/// Applies an optional per-head norm over the last (head) axis of `[batch, heads, n, d]`.
pub(crate) fn norm_heads<B: Backend>(norm: &Option<RmsNorm<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match norm {
        Some(norm) => in_accumulation(x, |x| norm.forward(x)),
        None => x,
    }
}

/// `[batch, n, heads * d]` to `[batch, heads, n, d]`.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, heads, c / heads]).swap_dims(1, 2)
}

/// `[batch, heads, n, d]` to `[batch, n, heads * d]`.
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}
