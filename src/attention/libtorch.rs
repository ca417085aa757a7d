//! [`AttentionBackend`] for burn-tch's `LibTorch` (feature `tch`): PyTorch's fused attention
//! kernels, the pairs its `scaled_dot_product_attention` runs under autograd.
//!
//! The unhooked forward is `scaled_dot_product_attention` (on CUDA PyTorch picks flash or
//! memory-efficient attention, on the CPU its flash kernel). The autodiff operation runs, on
//! CUDA, the memory-efficient kernel's forward (which returns the row log-sum-exp) and its
//! backward; on the CPU, the CPU flash kernel's forward and backward. Half-precision inputs stay
//! half: the kernels keep f32 statistics. Values heads wider or narrower than the queries' (which
//! no model here has) take the chunked computation of the other backends, widened to f32.

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

/// Whether PyTorch's CPU flash kernels take these operands: on the CPU, values with the
/// queries' head size.
fn cpu_flash(q: &TchTensor, v: &TchTensor) -> bool {
    !on_cuda(q) && q.tensor.size().last() == v.tensor.size().last()
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
        if on_cuda(&q) || cpu_flash(&q, &v) {
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
        if cpu_flash(&q, &v) {
            let (out, lse) = TorchTensor::internal_scaled_dot_product_flash_attention_for_cpu(
                &last_dim_contiguous(&q.tensor),
                &last_dim_contiguous(&k.tensor),
                &last_dim_contiguous(&v.tensor),
                0.0,
                false,
                None::<TorchTensor>,
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
        if cpu_flash(&q, &v) {
            return cpu_backward(q, k, v, out, stats, d_out, scale);
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

/// The tensor in `kind`, converted only when it is not already.
fn in_kind(t: TorchTensor, kind: Kind) -> TorchTensor {
    if t.kind() == kind { t } else { t.to_kind(kind) }
}

/// PyTorch's CPU flash attention backward, as its `scaled_dot_product_attention` autograd node
/// calls it on the CPU: the forward's output and row log-sum-exp (`[batch, heads, n_q]`) as they
/// came, the incoming gradient in the output's type.
fn cpu_backward(
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    out: TchTensor,
    lse: TchTensor,
    d_out: TchTensor,
    scale: f64,
) -> [TchTensor; 3] {
    let d_out = in_kind(d_out.tensor, out.tensor.kind());
    let (dq, dk, dv) = TorchTensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
        &last_dim_contiguous(&d_out),
        &last_dim_contiguous(&q.tensor),
        &last_dim_contiguous(&k.tensor),
        &last_dim_contiguous(&v.tensor),
        &out.tensor,
        &lse.tensor,
        0.0,
        false,
        None::<TorchTensor>,
        scale,
    );
    [dq, dk, dv].map(TchTensor::new)
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
    let d_out = in_kind(d_out.tensor, q.tensor.kind());
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

/// The CPU flash kernels against the explicit `softmax(q k^T * scale) v` under autodiff: output
/// and `dq`, `dk`, `dv` of `sum(attention * w)` for self and cross attention shapes (run with
/// `--features tch`; CI builds no libtorch).
#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Element, Tensor, TensorData};
    use burn_tch::{LibTorch, LibTorchDevice, TchElement};

    use crate::attention::efficient_attention;
    use crate::attention::test_util::{rel_err, values};

    /// Standard normal values from a seeded generator, the same for both paths.
    fn normal(n: usize, seed: u64) -> Vec<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Box-Muller.
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect()
    }

    /// `[out, dq, dk, dv]` of `sum(f(q, k, v) * w)` on `Autodiff<LibTorch<E>>`.
    fn run<E: TchElement + Element>(dims: [[usize; 4]; 3], fused: bool) -> [Vec<f64>; 4] {
        type A<E> = Autodiff<LibTorch<E>>;
        let device = LibTorchDevice::Cpu;
        let [b, h, n_q, _] = dims[0];
        let w_dims = [b, h, n_q, dims[2][3]];
        let tensor = |d: [usize; 4], seed| {
            let data = TensorData::new(normal(d.iter().product(), seed), d).convert::<E>();
            // The dtype explicitly: a device's default float type is the first backend's to
            // use it (the f32 tests' when they run first in this process).
            Tensor::<A<E>, 4>::from_data(data, (&device, E::dtype()))
        };
        let (q, k, v) = (
            tensor(dims[0], 1).require_grad(),
            tensor(dims[1], 2).require_grad(),
            tensor(dims[2], 3).require_grad(),
        );
        let w = tensor(w_dims, 4);
        let scale = 1.0 / (dims[0][3] as f64).sqrt();
        let out = if fused {
            efficient_attention(q.clone(), k.clone(), v.clone(), scale, Some(16))
        } else {
            softmax(q.clone().matmul(k.clone().swap_dims(2, 3)) * scale, 3).matmul(v.clone())
        };
        let grads = (out.clone() * w).sum().backward();
        let grad = |t: &Tensor<A<E>, 4>| values(t.grad(&grads).unwrap());
        [values(out.inner()), grad(&q), grad(&k), grad(&v)]
    }

    fn check<E: TchElement + Element>(tol: f64) {
        // Self attention with a ragged last block; cross attention to 77 text tokens.
        for dims in [
            [[2, 3, 37, 16], [2, 3, 37, 16], [2, 3, 37, 16]],
            [[2, 2, 64, 8], [2, 2, 77, 8], [2, 2, 77, 8]],
        ] {
            let fused = run::<E>(dims, true);
            let plain = run::<E>(dims, false);
            for (name, (a, b)) in ["out", "dq", "dk", "dv"]
                .iter()
                .zip(fused.iter().zip(&plain))
            {
                let err = rel_err(a, b);
                assert!(err < tol, "{name} of {dims:?}: relative error {err:e}");
            }
        }
    }

    /// The autodiff operation saves the CPU flash kernel's statistics (`[batch, heads, n_q]`;
    /// the chunked default's are `[batch, heads, n_q, 1]`), so the kernels above ran.
    #[test]
    fn cpu_attention_runs_the_flash_kernel() {
        use crate::attention::AttentionBackend;
        use crate::backend::primitive;
        type B = LibTorch<f32>;
        let device = LibTorchDevice::Cpu;
        let t = |n| {
            primitive(Tensor::<B, 4>::random(
                [1, 2, n, 8],
                Distribution::Default,
                &device,
            ))
        };
        let (_, stats) = <B as AttentionBackend>::attention_forward(t(5), t(7), t(7), 0.3, 4);
        assert_eq!(stats.tensor.size(), [1, 2, 5]);
    }

    #[test]
    fn cpu_flash_matches_the_explicit_softmax_in_f64() {
        check::<f64>(1e-12);
    }

    #[test]
    fn cpu_flash_matches_the_explicit_softmax_in_f32() {
        check::<f32>(2e-5);
    }
}
