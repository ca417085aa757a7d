//! [`AttentionBackend`] for burn-tch's `LibTorch` (feature `tch`): PyTorch's fused attention
//! kernels on CUDA, the chunked defaults on the CPU.
//!
//! On a CUDA device the unhooked forward is `scaled_dot_product_attention` (PyTorch picks flash
//! or memory-efficient attention), and the autodiff operation runs PyTorch's memory-efficient
//! kernel forward (which returns the row log-sum-exp) and its backward, exactly the pair that
//! `scaled_dot_product_attention` under PyTorch's autograd runs. Half-precision inputs stay half:
//! the kernels keep f32 statistics. On the CPU the chunked computation of the other backends
//! runs, on inputs widened to f32, so CPU results do not depend on the backend.

use burn::tensor::ops::FloatTensor;
use burn_tch::{LibTorch, TchElement, TchTensor};
use tch::{Kind, Tensor as TorchTensor};

use super::chunked;
use super::efficient::{AttentionBackend, chunked_backward, primitive, tensor};
use crate::precision::{cast_to, upcast};

/// Whether PyTorch's CUDA kernels apply.
fn on_cuda(t: &TchTensor) -> bool {
    t.tensor.device().is_cuda()
}

/// The tensor with a unit stride in its last dimension, as the fused kernels require.
fn last_dim_contiguous(t: &TorchTensor) -> TorchTensor {
    if t.stride().last() == Some(&1) {
        t.shallow_clone()
    } else {
        t.contiguous()
    }
}

/// The chunked forward of the other backends on inputs widened to f32 (the CPU path): the
/// output in the inputs' type and the f32 row log-sum-exp.
fn chunked_wide<E: TchElement>(
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    scale: f64,
    chunk: usize,
) -> (TchTensor, TchTensor) {
    let wide = |t| upcast(tensor::<LibTorch<E>>(t));
    let dtype = tensor::<LibTorch<E>>(v.clone()).dtype();
    let (out, lse) = chunked::forward(wide(q), wide(k), wide(v), scale, chunk);
    (primitive(cast_to(out, dtype)), primitive(lse))
}

impl<E: TchElement> AttentionBackend for LibTorch<E> {
    const NARROW_INPUTS: bool = true;

    fn memory_efficient_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> FloatTensor<Self> {
        if on_cuda(&q) {
            return TchTensor::new(TorchTensor::scaled_dot_product_attention(
                &q.tensor,
                &k.tensor,
                &v.tensor,
                None::<TorchTensor>,
                0.0,
                false,
                scale,
                false,
            ));
        }
        chunked_wide::<E>(q, k, v, scale, chunk).0
    }

    /// On CUDA the statistics are the kernel's own log-sum-exp (f32, `[batch, heads, n_q']`
    /// with `n_q` padded to the kernel's block).
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if on_cuda(&q) {
            let (out, lse, _seed, _offset) =
                TorchTensor::internal_scaled_dot_product_efficient_attention(
                    &last_dim_contiguous(&q.tensor),
                    &last_dim_contiguous(&k.tensor),
                    &last_dim_contiguous(&v.tensor),
                    None::<TorchTensor>,
                    true,
                    0.0,
                    false,
                    scale,
                );
            return (TchTensor::new(out), TchTensor::new(lse));
        }
        chunked_wide::<E>(q, k, v, scale, chunk)
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
        if on_cuda(&q) {
            return cuda_backward(q, k, v, out, stats, d_out, scale);
        }
        let dtypes = [&q, &k, &v].map(|t| tensor::<Self>(t.clone()).dtype());
        let wide = |t| primitive(upcast(tensor::<Self>(t)));
        let (q, k, v, out, d_out) = (wide(q), wide(k), wide(v), wide(out), wide(d_out));
        let [dq, dk, dv] = chunked_backward::<Self>(q, k, v, out, stats, d_out, scale, chunk);
        let narrow = |g, dtype| primitive(cast_to(tensor::<Self>(g), dtype));
        [
            narrow(dq, dtypes[0]),
            narrow(dk, dtypes[1]),
            narrow(dv, dtypes[2]),
        ]
    }
}

/// PyTorch's memory-efficient attention backward, called as its `scaled_dot_product_attention`
/// autograd node calls it: the kernel works in `[batch, n, heads, d]` layout, so every operand
/// is viewed transposed and the gradients are transposed back.
fn cuda_backward(
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    out: TchTensor,
    lse: TchTensor,
    d_out: TchTensor,
    scale: f64,
) -> [TchTensor; 3] {
    let t = |x: &TorchTensor| last_dim_contiguous(x).transpose(1, 2);
    let d_out = if d_out.tensor.kind() == q.tensor.kind() {
        d_out.tensor
    } else {
        d_out.tensor.to_kind(q.tensor.kind())
    };
    let (n_q, n_k) = (q.tensor.size()[2], k.tensor.size()[2]);
    // Only read when dropout is on; the forward's are empty at dropout 0.
    let philox = TorchTensor::zeros([], (Kind::Int64, q.tensor.device()));
    let (dq, dk, dv, _) = TorchTensor::internal_efficient_attention_backward(
        &t(&d_out),
        &t(&q.tensor),
        &t(&k.tensor),
        &t(&v.tensor),
        None::<TorchTensor>,
        &t(&out.tensor),
        None::<TorchTensor>,
        None::<TorchTensor>,
        n_q,
        n_k,
        &lse.tensor,
        0.0,
        &philox,
        &philox,
        0,
        false,
        scale,
        None::<i64>,
        None::<i64>,
        false,
    );
    [dq, dk, dv].map(|g| TchTensor::new(g.transpose(1, 2)))
}
