//! Attention sites, the attention-hook trait and the one attention helper every model uses.
//!
//! Ports the probability-capturing part of diffusers' `attention_processor.py` without
//! replacing the attention computation: a model threads `hook: &mut H` down its `forward`,
//! the way llama-burn threads its key-value cache, and every attention layer asks the hook
//! whether it [`wants`](AttentionHook::wants) its site. Wanted sites compute an explicit softmax
//! (in the accumulation type, f32 under autocast) whose probabilities stay on the autodiff graph and are handed
//! to [`on_probs`](AttentionHook::on_probs); every other site takes the memory-efficient
//! attention of [`AttentionBackend`], whose backward recomputes the probabilities in query
//! chunks instead of keeping them. With [`NoHook`] the branch disappears after
//! monomorphisation.

mod autodiff;
pub mod chunked;
mod efficient;
mod layer;
#[cfg(feature = "tch")]
mod libtorch;
mod site;
mod store;

pub use efficient::{
    AttentionBackend, AutodiffAttentionBackend, attention_logsumexp, efficient_attention,
};
pub use layer::{Attention, AttentionConfig};
pub(crate) use layer::{merge_heads, norm_heads, split_heads};
pub use site::{AttentionKind, AttentionSite, BlockPos, Slot};
pub use store::{AttentionStore, SiteFilter, StoredMap};

use crate::precision::upcast;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, backend::Backend};

/// Receives the attention probabilities of the layers it asks for.
///
/// A hook is passed to a model's `forward_with_hook` as `&mut H`, never stored in a module.
/// `wants` is asked once per layer call; only for a `true` answer does the layer materialise
/// its probabilities, so a hook that wants nothing costs nothing.
pub trait AttentionHook<B: Backend> {
    /// Whether the layer at `site` should hand its probabilities to [`Self::on_probs`].
    fn wants(&self, _site: &AttentionSite) -> bool {
        false
    }

    /// Receives the probabilities of a wanted site.
    ///
    /// # Shapes
    /// - `probs`: `[batch, heads, queries, keys]`, rows summing to one over the keys. For a
    ///   [joint](AttentionKind::Joint) site it is the image-query to text-key block of the joint
    ///   softmax, `[batch, heads, n_image, n_text]` (rows then sum to less than one).
    /// - `grid`: the `[height, width]` of the query tokens (`height * width == queries` for
    ///   UNet and image-token queries).
    ///
    /// The tensor keeps its autodiff graph: a loss on it trains the model.
    fn on_probs(&mut self, site: &AttentionSite, grid: [usize; 2], probs: Tensor<B, 4>);

    /// Which part of a wanted [joint](AttentionKind::Joint) site's softmax
    /// [`on_probs`](Self::on_probs) receives: the image-to-text block (default) or the full
    /// `[batch, heads, n_image + n_text, n_image + n_text]` map.
    fn joint_view(&self, _site: &AttentionSite) -> JointView {
        JointView::ImageToText
    }
}

/// The part of a joint attention map a hook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JointView {
    /// `P[:, :, :n_image, n_image:]`: image queries over text keys (what CTCal supervises).
    #[default]
    ImageToText,
    /// The whole joint softmax, image tokens first.
    Full,
}

/// The hook that wants nothing: every attention layer takes the memory-efficient path.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<B: Backend> AttentionHook<B> for NoHook {
    #[inline(always)]
    fn wants(&self, _site: &AttentionSite) -> bool {
        false
    }

    fn on_probs(&mut self, _site: &AttentionSite, _grid: [usize; 2], _probs: Tensor<B, 4>) {}
}

impl<B: Backend, H: AttentionHook<B> + ?Sized> AttentionHook<B> for &mut H {
    fn wants(&self, site: &AttentionSite) -> bool {
        (**self).wants(site)
    }

    fn on_probs(&mut self, site: &AttentionSite, grid: [usize; 2], probs: Tensor<B, 4>) {
        (**self).on_probs(site, grid, probs)
    }

    fn joint_view(&self, site: &AttentionSite) -> JointView {
        (**self).joint_view(site)
    }
}

/// Scaled dot-product attention with the hook decision in one place.
///
/// Wanted sites compute `softmax(q k^T * scale)` explicitly, the softmax in the accumulation
/// type (f32 under autocast; with `upcast`, diffusers' `upcast_attention`, the `q k^T` product
/// too), and pass its probabilities to the hook before multiplying `v`. Other sites call [`efficient_attention`] (no
/// `[batch, heads, queries, keys]` buffer in the forward or, under autodiff, the backward).
///
/// # Shapes
/// - `q`: `[batch, heads, queries, head_dim]`
/// - `k`, `v`: `[batch, heads, keys, head_dim]`
/// - returns `[batch, heads, queries, head_dim]`
pub fn attend<B: AttentionBackend, H: AttentionHook<B>>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    site: &AttentionSite,
    grid: [usize; 2],
    upcast: bool,
    hook: &mut H,
) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    let scale = (head_dim as f64).powf(-0.5);
    if !hook.wants(site) {
        return efficient_attention(q, k, v, scale, None);
    }
    let probs = explicit_probs(q, k, scale, upcast);
    hook.on_probs(site, grid, probs.clone());
    let dtype = v.dtype();
    probs.cast(dtype).matmul(v)
}

/// Joint attention over `[image tokens ; text tokens]` (image first, as diffusers orders them).
///
/// Every site computes its output with [`efficient_attention`]. A wanted site with the default
/// [`JointView::ImageToText`] also gets the image-query to text-key block
/// `P[:, :, :n_image, n_image:] = exp(q_i k_t^T * scale - L_i)` from the image rows' joint
/// log-sum-exp `L_i` ([`attention_logsumexp`], differentiable), so the whole joint matrix is
/// never formed (the block is in the accumulation type for narrower inputs). Only
/// [`JointView::Full`] computes the joint softmax explicitly.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, heads, n_image + n_text, head_dim]`
/// - returns `[batch, heads, n_image + n_text, head_dim]`
pub fn attend_joint<B: AttentionBackend, H: AttentionHook<B>>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    n_image: usize,
    site: &AttentionSite,
    grid: [usize; 2],
    hook: &mut H,
) -> Tensor<B, 4> {
    if !hook.wants(site) {
        return attend(q, k, v, site, grid, true, hook);
    }
    let [_, _, n, head_dim] = q.dims();
    let scale = (head_dim as f64).powf(-0.5);
    if hook.joint_view(site) == JointView::Full {
        let probs = explicit_probs(q, k, scale, true);
        hook.on_probs(site, grid, probs.clone());
        let dtype = v.dtype();
        return probs.cast(dtype).matmul(v);
    }
    let out = efficient_attention(q.clone(), k.clone(), v, scale, None);
    let (q, k) = (upcast(q), upcast(k));
    let q_image = q.narrow(2, 0, n_image);
    let lse = attention_logsumexp(q_image.clone(), k.clone(), scale, None);
    let k_text = k.narrow(2, n_image, n - n_image);
    let probs = (q_image.matmul(k_text.swap_dims(2, 3)) * scale - lse).exp();
    hook.on_probs(site, grid, probs);
    out
}

/// `softmax(q k^T * scale)` over the last axis, in [`accumulation_dtype`]; with `upcast_qk`,
/// `q` and `k` narrower than that are cast up before their product too (diffusers'
/// `upcast_attention`).
///
/// [`accumulation_dtype`]: crate::precision::accumulation_dtype
pub(crate) fn explicit_probs<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
    upcast_qk: bool,
) -> Tensor<B, 4> {
    let (q, k) = if upcast_qk {
        (upcast(q), upcast(k))
    } else {
        (q, k)
    };
    // The softmax itself always runs wide (autocast keeps softmax in f32 too).
    let scores = upcast(q.matmul(k.swap_dims(2, 3))).mul_scalar(scale);
    softmax(scores, 3)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests;

#[cfg(all(test, feature = "ndarray"))]
mod efficient_tests;

#[cfg(test)]
pub(crate) mod test_util;
