//! Attention sites, the attention-hook trait and the one attention helper every model uses.
//!
//! Ports the probability-capturing part of diffusers' `attention_processor.py` without
//! replacing the attention computation: a model threads `hook: &mut H` down its `forward`,
//! the way llama-burn threads its key-value cache, and every attention layer asks the hook
//! whether it [`wants`](AttentionHook::wants) its site. Wanted sites compute an explicit softmax
//! (in f32 when the layer upcasts) whose probabilities stay on the autodiff graph and are handed
//! to [`on_probs`](AttentionHook::on_probs); every other site takes burn's fused `attention` op.
//! With [`NoHook`] the branch disappears after monomorphisation.

mod layer;
mod site;
mod store;

pub use layer::{Attention, AttentionConfig};
pub(crate) use layer::{merge_heads, norm_heads, split_heads};
pub use site::{AttentionKind, AttentionSite, BlockPos, Slot};
pub use store::{AttentionStore, SiteFilter, StoredMap};

use burn::tensor::activation::softmax;
use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, backend::Backend};

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

/// The hook that wants nothing: every attention layer takes the fused path.
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
/// Wanted sites compute `softmax(q k^T * scale)` explicitly; the softmax runs in f32 when
/// `upcast` is set (diffusers' `upcast_attention` and `upcast_softmax`) and its probabilities are
/// passed to the hook before multiplying `v`. Other sites call burn's fused attention.
///
/// # Shapes
/// - `q`: `[batch, heads, queries, head_dim]`
/// - `k`, `v`: `[batch, heads, keys, head_dim]`
/// - returns `[batch, heads, queries, head_dim]`
pub fn attend<B: Backend, H: AttentionHook<B>>(
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
        let options = AttentionModuleOptions {
            scale: Some(scale),
            ..Default::default()
        };
        return fused_attention(q, k, v, None, None, options);
    }
    let probs = explicit_probs(q, k, scale, upcast);
    hook.on_probs(site, grid, probs.clone());
    let dtype = v.dtype();
    probs.cast(dtype).matmul(v)
}

/// Joint attention over `[image tokens ; text tokens]` (image first, as diffusers orders them).
///
/// A wanted site computes the joint softmax explicitly (in f32 for half-precision inputs) and
/// hands the hook its image-query to text-key block `P[:, :, :n_image, n_image:]`, or the whole
/// map if the hook's [`joint_view`](AttentionHook::joint_view) asks; other sites call burn's
/// fused attention.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, heads, n_image + n_text, head_dim]`
/// - returns `[batch, heads, n_image + n_text, head_dim]`
pub fn attend_joint<B: Backend, H: AttentionHook<B>>(
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
    let [b, h, n, _] = q.dims();
    let scale = (q.dims()[3] as f64).powf(-0.5);
    let probs = explicit_probs(q, k, scale, true);
    let view = match hook.joint_view(site) {
        JointView::ImageToText => probs.clone().slice([0..b, 0..h, 0..n_image, n_image..n]),
        JointView::Full => probs.clone(),
    };
    hook.on_probs(site, grid, view);
    let dtype = v.dtype();
    probs.cast(dtype).matmul(v)
}

/// `softmax(q k^T * scale)` over the last axis; with `upcast`, half-precision inputs are cast
/// to f32 first (f32 and f64 inputs are left as they are).
pub(crate) fn explicit_probs<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
    upcast: bool,
) -> Tensor<B, 4> {
    let (q, k) = if upcast && matches!(q.dtype(), DType::F16 | DType::BF16) {
        (q.cast(DType::F32), k.cast(DType::F32))
    } else {
        (q, k)
    };
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    softmax(scores, 3)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests;
