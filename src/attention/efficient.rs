//! Memory-efficient attention: a backend extension whose autodiff version has its own backward.
//!
//! burn 0.21's `attention` under `Autodiff` falls back to `softmax(q k^T) v` in separate tensor
//! operations, so the graph keeps the whole `[batch, heads, n_q, n_k]` probability matrix for
//! the backward (2.7 GB for one SD 2.1 self-attention at 512 px, batch 8). The operation here
//! keeps only `q`, `k`, `v`, the output and the row log-sum-exp, and its backward recomputes
//! the probabilities query chunk by query chunk (see [`chunked`](super::chunked)).
//!
//! [`AttentionBackend`] is implemented for the backends the crate's features add (ndarray, and
//! cubecl's `CubeBackend` with or without `Fusion`, which `Wgpu` and `Cuda` are) using the
//! chunked default forward, and for `Autodiff<B, C>` (any checkpointing strategy) with the
//! custom backward (in [`autodiff`](super::autodiff)).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::chunked;
use crate::backend::KernelBackend;
use crate::precision::{cast_to, upcast};

/// A backend with memory-efficient attention and a differentiable row log-sum-exp.
///
/// The defaults compute in query chunks with plain tensor operations; `Autodiff<B, C>` overrides
/// both with operations whose backward recomputes the probabilities chunk by chunk. Every model
/// in this crate that attends needs `B: AttentionBackend`.
pub trait AttentionBackend: KernelBackend {
    /// Whether the operations below take half-precision inputs as they are (a fused kernel
    /// that keeps f32 softmax statistics itself). When false (the chunked defaults), bf16 and
    /// f16 inputs are computed in f32.
    const NARROW_INPUTS: bool = false;

    /// `softmax(q k^T * scale) v` without materialising the whole score matrix.
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`,
    ///   `v`: `[batch, heads, n_k, d_v]`; returns `[batch, heads, n_q, d_v]`
    /// - at most `chunk` query rows' scores (`[batch, heads, chunk, n_k]`) exist at a time
    fn memory_efficient_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> FloatTensor<Self> {
        chunked_forward::<Self>(q, k, v, scale, chunk).0
    }

    /// The attention output and the row statistics its backward needs, for the autodiff
    /// operation to save. The statistics are opaque to callers: only
    /// [`attention_backward`](Self::attention_backward) of the same backend reads them (the
    /// default: the row log-sum-exp `[batch, heads, n_q, 1]`).
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        chunked_forward::<Self>(q, k, v, scale, chunk)
    }

    /// Gradients `(dq, dk, dv)` of [`attention_forward`](Self::attention_forward)'s output
    /// given `d_out`, from the saved inputs, output and statistics (the default recomputes the
    /// probabilities chunk by chunk).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> [FloatTensor<Self>; 3] {
        chunked_backward::<Self>(q, k, v, out, stats, d_out, scale, chunk)
    }

    /// The row log-sum-exp `L_i = log sum_j exp(q_i . k_j * scale)`, chunked like
    /// [`memory_efficient_attention`](Self::memory_efficient_attention).
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`;
    ///   returns `[batch, heads, n_q, 1]`
    fn attention_logsumexp(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> FloatTensor<Self> {
        chunked_logsumexp::<Self>(q, k, scale, chunk)
    }
}

/// An autodiff backend whose inner backend has memory-efficient attention too: what a training
/// step needs (the student runs under autodiff, the no-grad teacher on the inner backend).
/// Implemented for every such backend, e.g. `Autodiff<NdArray>`, `Autodiff<Wgpu, BalancedCheckpointing>`.
pub trait AutodiffAttentionBackend:
    AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend
{
}

impl<B: AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend> AutodiffAttentionBackend
    for B
{
}

/// [`chunked::forward`] on primitives: the default
/// [`AttentionBackend::attention_forward`], returning the output and the row log-sum-exp.
pub(crate) fn chunked_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
    chunk: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (out, lse) = chunked::forward(tensor::<B>(q), tensor(k), tensor(v), scale, chunk);
    (primitive(out), primitive(lse))
}

/// [`chunked::logsumexp`] on primitives: the default [`AttentionBackend::attention_logsumexp`].
pub(crate) fn chunked_logsumexp<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    scale: f64,
    chunk: usize,
) -> FloatTensor<B> {
    primitive(chunked::logsumexp(tensor::<B>(q), tensor(k), scale, chunk))
}

/// [`chunked::backward`] on primitives: the default
/// [`AttentionBackend::attention_backward`], with `lse` the saved row log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunked_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    d_out: FloatTensor<B>,
    scale: f64,
    chunk: usize,
) -> [FloatTensor<B>; 3] {
    let saved = chunked::Saved {
        q: tensor::<B>(q),
        k: tensor(k),
        v: tensor(v),
        out: tensor(out),
        lse: tensor(lse),
    };
    let (dq, dk, dv) = chunked::backward(saved, tensor(d_out), scale, chunk);
    [primitive(dq), primitive(dk), primitive(dv)]
}

/// Wraps a float primitive in a rank-4 tensor.
pub(crate) fn tensor<B: Backend>(p: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Unwraps a float tensor's primitive.
pub(crate) fn primitive<B: Backend>(t: Tensor<B, 4>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `softmax(q k^T * scale) v` through [`AttentionBackend::memory_efficient_attention`], with the
/// chunk from [`chunked::default_chunk`] unless given.
///
/// # Shapes
/// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`, `v`: `[batch, heads, n_k, d_v]`
/// - returns `[batch, heads, n_q, d_v]`
pub fn efficient_attention<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    chunk: Option<usize>,
) -> Tensor<B, 4> {
    let [b, h, _, _] = q.dims();
    let chunk = chunk.unwrap_or_else(|| chunked::default_chunk(b, h, k.dims()[2]));
    // Narrow inputs (bf16 under autocast) are computed wide unless the backend's kernel takes
    // them as they are: the chunked softmax statistics and the saved log-sum-exp need f32.
    let dtype = v.dtype();
    let wide = |t: Tensor<B, 4>| primitive(if B::NARROW_INPUTS { t } else { upcast(t) });
    let out = tensor(B::memory_efficient_attention(
        wide(q),
        wide(k),
        wide(v),
        scale,
        chunk,
    ));
    cast_to(out, dtype)
}

/// The row log-sum-exp of `q k^T * scale` through [`AttentionBackend::attention_logsumexp`]
/// (differentiable under autodiff), chunked like [`efficient_attention`].
///
/// # Shapes
/// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`; returns `[batch, heads, n_q, 1]`
pub fn attention_logsumexp<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
    chunk: Option<usize>,
) -> Tensor<B, 4> {
    let [b, h, _, _] = q.dims();
    let chunk = chunk.unwrap_or_else(|| chunked::default_chunk(b, h, k.dims()[2]));
    tensor(B::attention_logsumexp(
        primitive(upcast(q)),
        primitive(upcast(k)),
        scale,
        chunk,
    ))
}

#[cfg(feature = "ndarray")]
mod ndarray_impl {
    use burn::backend::NdArray;
    use burn::backend::ndarray::{
        FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray,
    };

    use burn::tensor::ops::FloatTensor;

    use super::{chunked_backward, chunked_forward, chunked_logsumexp};
    use crate::backend::host_attention;

    /// The host kernels of `backend/host_attention.rs` (one rayon task per sample, head and
    /// block of query rows); the chunked tensor operations for the dtypes and shapes they do
    /// not take.
    impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> super::AttentionBackend
        for NdArray<E, I, Q>
    where
        NdArrayTensor: From<SharedArray<E>>,
        NdArrayTensor: From<SharedArray<I>>,
    {
        fn memory_efficient_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
            chunk: usize,
        ) -> FloatTensor<Self> {
            Self::attention_forward(q, k, v, scale, chunk).0
        }

        fn attention_forward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
            chunk: usize,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            host_attention::forward(&q, &k, &v, scale, chunk)
                .unwrap_or_else(|| chunked_forward::<Self>(q, k, v, scale, chunk))
        }

        fn attention_backward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            out: FloatTensor<Self>,
            stats: FloatTensor<Self>,
            d_out: FloatTensor<Self>,
            scale: f64,
            chunk: usize,
        ) -> [FloatTensor<Self>; 3] {
            host_attention::backward(&q, &k, &v, &out, &stats, &d_out, scale, chunk).unwrap_or_else(
                || chunked_backward::<Self>(q, k, v, out, stats, d_out, scale, chunk),
            )
        }

        fn attention_logsumexp(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            scale: f64,
            chunk: usize,
        ) -> FloatTensor<Self> {
            host_attention::logsumexp(&q, &k, scale, chunk)
                .unwrap_or_else(|| chunked_logsumexp::<Self>(q, k, scale, chunk))
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
mod cube_impl {
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
    use burn_fusion::{Fusion, FusionBackend};

    use crate::backend::KernelBackend;

    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> super::AttentionBackend
        for CubeBackend<R, F, I, BT>
    {
    }

    impl<B: FusionBackend + KernelBackend> super::AttentionBackend for Fusion<B> {}
}
