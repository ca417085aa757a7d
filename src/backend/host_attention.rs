//! burn-ndarray's own attention kernels: the chunked forward, backward and row log-sum-exp of
//! [`attention::chunked`](crate::attention::chunked) as loops over blocks of query rows, one
//! rayon task per (sample, head, block), matrix products by `matrixmultiply` on strided views.
//!
//! The portable version is about ten burn operations per score block: each allocates a
//! `[batch, heads, chunk, n_k]` buffer and runs on one thread, and every product with a
//! transposed operand (`K^T`, `P^T`, `dS^T`) first copies it element by element into row-major
//! order. On the shapes and tiny SD 2.1 UNets that was a fifth of a training step. Here a task
//! holds one `[rows, n_k]` block (about 256 KiB in f32) in its cache, exponentiates it in place
//! and reads every operand where it lies; no buffer holds a whole score matrix.
//!
//! Outputs are laid out `[batch, tokens, heads, channels]` and handed back permuted to
//! `[batch, heads, tokens, channels]`: the layers merge the heads by swapping those axes back,
//! which then needs no copy.

use burn::backend::ndarray::NdArrayTensor;
use ndarray::{
    ArcArray, Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2, Axis, Ix4, IxDyn, s,
};
use rayon::prelude::*;

use super::host::dispatch;
use super::host_gemm::{Float, Threads, matmul};

/// Score elements one block holds: 64 Ki (256 KiB in f32).
const BLOCK_ELEMENTS: usize = 1 << 16;

/// The fewest query rows of a block (when keys are many).
const MIN_ROWS: usize = 16;

/// `softmax(q k^T * scale) v` and the row log-sum-exp `[batch, heads, n_q, 1]`
/// ([`AttentionBackend::attention_forward`](crate::attention::AttentionBackend::attention_forward));
/// `None` for other or mixed dtypes and shapes the kernel does not take.
pub(crate) fn forward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<(NdArrayTensor, NdArrayTensor)> {
    dispatch!(q, forward_typed(q, k, v, scale, chunk))
}

/// The row log-sum-exp of `q k^T * scale`, `[batch, heads, n_q, 1]`
/// ([`AttentionBackend::attention_logsumexp`](crate::attention::AttentionBackend::attention_logsumexp)).
pub(crate) fn logsumexp(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<NdArrayTensor> {
    dispatch!(q, logsumexp_typed(q, k, scale, chunk))
}

/// `[dq, dk, dv]` of [`forward`] given the output's gradient, recomputing the probabilities
/// block by block from the saved log-sum-exp (FlashAttention-2's recurrences, as in
/// [`chunked::backward`](crate::attention::chunked::backward)).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    out: &NdArrayTensor,
    lse: &NdArrayTensor,
    d_out: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<[NdArrayTensor; 3]> {
    dispatch!(q, backward_typed(q, k, v, out, lse, d_out, scale, chunk))
}

/// A rank-4 view of `t` when it holds `T`.
fn view4<T: Float>(t: &NdArrayTensor) -> Option<ArrayView4<'_, T>>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    T::view(t)?.into_dimensionality::<Ix4>().ok()
}

/// The sizes of one attention call: `q [b, h, n_q, d]`, `k [b, h, n_k, d]`, `v [b, h, n_k, dv]`,
/// every size non-zero; `None` otherwise.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    n_q: usize,
    n_k: usize,
    d: usize,
    dv: usize,
}

impl Dims {
    fn of<T>(q: &ArrayView4<T>, k: &ArrayView4<T>, v: Option<&ArrayView4<T>>) -> Option<Self> {
        let [b, h, n_q, d] = <[usize; 4]>::try_from(q.shape()).ok()?;
        let [kb, kh, n_k, kd] = <[usize; 4]>::try_from(k.shape()).ok()?;
        let dv = match v {
            Some(v) => match *v.shape() {
                [vb, vh, vn, dv] if (vb, vh, vn) == (b, h, n_k) => dv,
                _ => return None,
            },
            None => d,
        };
        let sizes = [b, h, n_q, n_k, d, dv];
        ((kb, kh, kd) == (b, h, d) && sizes.iter().all(|&n| n > 0)).then_some(Self {
            b,
            h,
            n_q,
            n_k,
            d,
            dv,
        })
    }

    /// Query rows per block: a block of scores fits [`BLOCK_ELEMENTS`] (at least
    /// [`MIN_ROWS`] rows), stays within the caller's `chunk`, and each head splits into enough
    /// blocks for every thread to have two tasks.
    fn rows(&self, chunk: usize) -> usize {
        let per_head = (2 * rayon::current_num_threads()).div_ceil(self.b * self.h);
        (BLOCK_ELEMENTS / self.n_k)
            .min(self.n_q.div_ceil(per_head))
            .max(MIN_ROWS)
            .min(chunk.max(1))
            .min(self.n_q)
    }
}

/// A row-major `[b, tokens, h, c]` array handed out as `[b, h, tokens, c]`.
fn heads_last<T: Float>(array: Array4<T>) -> NdArrayTensor
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    NdArrayTensor::from(array.into_shared().permuted_axes([0, 2, 1, 3]).into_dyn())
}

/// `s <- exp(s - max)` row by row; returns each row's maximum and sum of exponentials.
fn exp_rows<T: Float>(s: &mut ArrayViewMut2<T>, mut each: impl FnMut(usize, T, T))
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    for (r, mut row) in s.outer_iter_mut().enumerate() {
        let m = row
            .iter()
            .copied()
            .fold(row[0], |m, x| if x > m { x } else { m });
        let mut z = T::zero();
        row.map_inplace(|x| {
            *x = (*x - m).exp();
            z += *x;
        });
        each(r, m, z);
    }
}

fn forward_typed<T: Float>(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<(NdArrayTensor, NdArrayTensor)>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (q, k, v) = (view4::<T>(q)?, view4::<T>(k)?, view4::<T>(v)?);
    let n = Dims::of(&q, &k, Some(&v))?;
    let rows = n.rows(chunk);
    let scale = T::narrow(scale);
    let mut out = Array4::<T>::zeros((n.b, n.n_q, n.h, n.dv));
    let mut lse = Array4::<T>::zeros((n.b, n.h, n.n_q, 1));
    let mut heads = out.view_mut().permuted_axes([0, 2, 1, 3]);
    heads
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(lse.axis_iter_mut(Axis(0)))
        .enumerate()
        .for_each(|(bi, (mut ob, mut lb))| {
            ob.axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(lb.axis_iter_mut(Axis(0)))
                .enumerate()
                .for_each(|(hi, (mut oh, mut lh))| {
                    let (qh, kh, vh) = (
                        q.slice(s![bi, hi, .., ..]),
                        k.slice(s![bi, hi, .., ..]),
                        v.slice(s![bi, hi, .., ..]),
                    );
                    oh.axis_chunks_iter_mut(Axis(0), rows)
                        .into_par_iter()
                        .zip(lh.axis_chunks_iter_mut(Axis(0), rows))
                        .enumerate()
                        .for_each(|(ci, (mut oc, mut lc))| {
                            let qc = qh.slice(s![ci * rows..ci * rows + oc.nrows(), ..]);
                            let mut sc = Array2::<T>::zeros((qc.nrows(), n.n_k));
                            matmul(qc, kh.t(), &mut sc.view_mut(), scale, false, Threads::One);
                            let mut inv = vec![T::zero(); qc.nrows()];
                            exp_rows(&mut sc.view_mut(), |r, m, z| {
                                lc[[r, 0]] = m + z.ln();
                                inv[r] = T::one() / z;
                            });
                            // Normalise after the product: [rows, dv] is smaller than [rows, n_k].
                            matmul(sc.view(), vh, &mut oc, T::one(), false, Threads::One);
                            for (mut row, &w) in oc.outer_iter_mut().zip(&inv) {
                                row.map_inplace(|x| *x = *x * w);
                            }
                        });
                });
        });
    let lse = NdArrayTensor::from(lse.into_shared().into_dyn());
    Some((heads_last(out), lse))
}

fn logsumexp_typed<T: Float>(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<NdArrayTensor>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (q, k) = (view4::<T>(q)?, view4::<T>(k)?);
    let n = Dims::of(&q, &k, None)?;
    let rows = n.rows(chunk);
    let scale = T::narrow(scale);
    let mut lse = Array4::<T>::zeros((n.b, n.h, n.n_q, 1));
    lse.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(bi, mut lb)| {
            lb.axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(hi, mut lh)| {
                    let (qh, kh) = (q.slice(s![bi, hi, .., ..]), k.slice(s![bi, hi, .., ..]));
                    lh.axis_chunks_iter_mut(Axis(0), rows)
                        .into_par_iter()
                        .enumerate()
                        .for_each(|(ci, mut lc)| {
                            let qc = qh.slice(s![ci * rows..ci * rows + lc.nrows(), ..]);
                            let mut sc = Array2::<T>::zeros((qc.nrows(), n.n_k));
                            matmul(qc, kh.t(), &mut sc.view_mut(), scale, false, Threads::One);
                            exp_rows(&mut sc.view_mut(), |r, m, z| lc[[r, 0]] = m + z.ln());
                        });
                });
        });
    Some(NdArrayTensor::from(lse.into_shared().into_dyn()))
}

/// Head `hi` of sample `bi`.
fn at<'a, T>(t: &'a ArrayView4<'_, T>, bi: usize, hi: usize) -> ArrayView2<'a, T> {
    t.slice(s![bi, hi, .., ..])
}

/// One head's saved forward state, `[tokens, channels]` each (`lse` `[n_q, 1]`).
struct Head<'a, T> {
    q: ArrayView2<'a, T>,
    k: ArrayView2<'a, T>,
    v: ArrayView2<'a, T>,
    out: ArrayView2<'a, T>,
    lse: ArrayView2<'a, T>,
    d_out: ArrayView2<'a, T>,
}

impl<T: Float> Head<'_, T>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    /// The gradients of the query rows `start..start + dq.nrows()`: writes their `dq` and
    /// returns their share of `(dk, dv)`, in blocks of `rows`.
    fn backward_rows(
        &self,
        start: usize,
        dq: &mut ArrayViewMut2<T>,
        rows: usize,
        scale: T,
    ) -> (Array2<T>, Array2<T>) {
        let (n_k, d, dv) = (self.k.nrows(), self.k.ncols(), self.v.ncols());
        let mut dk = Array2::<T>::zeros((n_k, d));
        let mut dv_acc = Array2::<T>::zeros((n_k, dv));
        let mut p_buf = Array2::<T>::zeros((rows.min(dq.nrows()), n_k));
        let mut dp_buf = p_buf.clone();
        for (ci, mut dqc) in dq.axis_chunks_iter_mut(Axis(0), rows).enumerate() {
            let r = start + ci * rows..start + ci * rows + dqc.nrows();
            let (qc, oc, doc) = (
                self.q.slice(s![r.clone(), ..]),
                self.out.slice(s![r.clone(), ..]),
                self.d_out.slice(s![r.clone(), ..]),
            );
            let lse = self.lse.slice(s![r, 0]);
            let mut p = p_buf.slice_mut(s![..qc.nrows(), ..]);
            let mut dp = dp_buf.slice_mut(s![..qc.nrows(), ..]);
            // P = exp(S - L).
            matmul(qc, self.k.t(), &mut p, scale, false, Threads::One);
            for (mut row, &l) in p.outer_iter_mut().zip(&lse) {
                row.map_inplace(|x| *x = (*x - l).exp());
            }
            // dV += P^T dO; dP = dO V^T.
            matmul(
                p.t(),
                doc,
                &mut dv_acc.view_mut(),
                T::one(),
                true,
                Threads::One,
            );
            matmul(doc, self.v.t(), &mut dp, T::one(), false, Threads::One);
            // dS = P * (dP - rowsum(dO * O)), in P's buffer.
            for (((mut p_row, dp_row), o_row), do_row) in p
                .outer_iter_mut()
                .zip(dp.outer_iter())
                .zip(oc.outer_iter())
                .zip(doc.outer_iter())
            {
                let dd = o_row
                    .iter()
                    .zip(&do_row)
                    .fold(T::zero(), |acc, (&o, &g)| acc + o * g);
                p_row
                    .iter_mut()
                    .zip(&dp_row)
                    .for_each(|(p, &g)| *p = *p * (g - dd));
            }
            // dQ = dS K * scale; dK += dS^T Q * scale.
            matmul(
                p.view(),
                self.k.view(),
                &mut dqc,
                scale,
                false,
                Threads::One,
            );
            matmul(p.t(), qc, &mut dk.view_mut(), scale, true, Threads::One);
        }
        (dk, dv_acc)
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<T: Float>(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    out: &NdArrayTensor,
    lse: &NdArrayTensor,
    d_out: &NdArrayTensor,
    scale: f64,
    chunk: usize,
) -> Option<[NdArrayTensor; 3]>
where
    NdArrayTensor: From<ArcArray<T, IxDyn>>,
{
    let (q, k, v) = (view4::<T>(q)?, view4::<T>(k)?, view4::<T>(v)?);
    let (out, lse, d_out) = (view4::<T>(out)?, view4::<T>(lse)?, view4::<T>(d_out)?);
    let n = Dims::of(&q, &k, Some(&v))?;
    let out_shape = [n.b, n.h, n.n_q, n.dv];
    if out.shape() != out_shape || d_out.shape() != out_shape || lse.shape() != [n.b, n.h, n.n_q, 1]
    {
        return None;
    }
    let rows = n.rows(chunk);
    // Each head's query rows split into groups of whole blocks, a task each, so that small
    // batches still give every thread work; a group sums its own (dk, dv) share.
    let per_head = (2 * rayon::current_num_threads()).div_ceil(n.b * n.h);
    let group = n.n_q.div_ceil(per_head).div_ceil(rows) * rows;
    let scale = T::narrow(scale);
    let mut dq = Array4::<T>::zeros((n.b, n.n_q, n.h, n.d));
    let mut dk = Array4::<T>::zeros((n.b, n.n_k, n.h, n.d));
    let mut dv = Array4::<T>::zeros((n.b, n.n_k, n.h, n.dv));
    let mut dq_heads = dq.view_mut().permuted_axes([0, 2, 1, 3]);
    let mut dk_heads = dk.view_mut().permuted_axes([0, 2, 1, 3]);
    let mut dv_heads = dv.view_mut().permuted_axes([0, 2, 1, 3]);
    dq_heads
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(dk_heads.axis_iter_mut(Axis(0)))
        .zip(dv_heads.axis_iter_mut(Axis(0)))
        .enumerate()
        .for_each(|(bi, ((mut dqb, mut dkb), mut dvb))| {
            dqb.axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(dkb.axis_iter_mut(Axis(0)))
                .zip(dvb.axis_iter_mut(Axis(0)))
                .enumerate()
                .for_each(|(hi, ((mut dqh, mut dkh), mut dvh))| {
                    let head = Head {
                        q: at(&q, bi, hi),
                        k: at(&k, bi, hi),
                        v: at(&v, bi, hi),
                        out: at(&out, bi, hi),
                        lse: at(&lse, bi, hi),
                        d_out: at(&d_out, bi, hi),
                    };
                    let shares: Vec<_> = dqh
                        .axis_chunks_iter_mut(Axis(0), group)
                        .into_par_iter()
                        .enumerate()
                        .map(|(gi, mut dqg)| head.backward_rows(gi * group, &mut dqg, rows, scale))
                        .collect();
                    for (i, (dk_share, dv_share)) in shares.into_iter().enumerate() {
                        if i == 0 {
                            dkh.assign(&dk_share);
                            dvh.assign(&dv_share);
                        } else {
                            dkh += &dk_share;
                            dvh += &dv_share;
                        }
                    }
                });
        });
    Some([heads_last(dq), heads_last(dk), heads_last(dv)])
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::TestBackend as B;
    use crate::attention::chunked;
    use crate::backend::{primitive as p, tensor as t};

    /// `(b, h, n_q, n_k, d, dv, chunk)`: one block and many, ragged last blocks, cross
    /// attention (few keys), one head, a caller's chunk below the block size.
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
        (2, 3, 37, 37, 8, 8, usize::MAX),
        (1, 1, 300, 5000, 4, 6, usize::MAX),
        (3, 2, 129, 7, 16, 16, usize::MAX),
        (1, 1, 70, 70, 5, 3, 9),
        (2, 1, 1, 1, 2, 2, usize::MAX),
    ];

    /// The host kernels against the portable chunked tensor operations (f64, the test
    /// backend): forward, log-sum-exp and backward, on query, key and value tensors laid out
    /// as the layers pass them (heads split off by a swap of axes, so not row-major).
    #[test]
    fn host_attention_matches_the_chunked_operations() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.5);
        let tol = Tolerance::absolute(1e-12).set_relative(1e-10);
        for (n, (b, h, n_q, n_k, d, dv, chunk)) in CASES.into_iter().enumerate() {
            let heads = |tokens, c| {
                Tensor::<B, 4>::random([b, tokens, h, c], normal, &device).swap_dims(1, 2)
            };
            let (q, k, v) = (heads(n_q, d), heads(n_k, d), heads(n_k, dv));
            let scale = (d as f64).powf(-0.5);
            let (want_out, want_lse) = chunked::forward(q.clone(), k.clone(), v.clone(), scale, 11);
            let (out, lse) =
                super::forward(&p(q.clone()), &p(k.clone()), &p(v.clone()), scale, chunk)
                    .expect("f64 inputs");
            let (out, lse) = (t(out), t(lse));
            assert_eq!(out.dims(), [b, h, n_q, dv], "case {n}");
            out.clone()
                .into_data()
                .assert_approx_eq::<f64>(&want_out.into_data(), tol);
            lse.clone()
                .into_data()
                .assert_approx_eq::<f64>(&want_lse.clone().into_data(), tol);
            let lse_only: Tensor<B, 4> =
                t(super::logsumexp(&p(q.clone()), &p(k.clone()), scale, chunk).expect("f64"));
            lse_only
                .into_data()
                .assert_approx_eq::<f64>(&want_lse.into_data(), tol);

            let d_out = heads(n_q, dv);
            let saved = chunked::Saved {
                q: q.clone(),
                k: k.clone(),
                v: v.clone(),
                out: out.clone(),
                lse: lse.clone(),
            };
            let want = chunked::backward(saved, d_out.clone(), scale, 13);
            let got = super::backward(
                &p(q),
                &p(k),
                &p(v),
                &p(out),
                &p(lse),
                &p(d_out),
                scale,
                chunk,
            )
            .expect("f64 inputs");
            let [dq, dk, dv_] = got.map(t::<B, 4>);
            for (name, got, want) in [("dq", dq, want.0), ("dk", dk, want.1), ("dv", dv_, want.2)] {
                assert_eq!(got.dims(), want.dims(), "case {n} {name}");
                got.into_data()
                    .assert_approx_eq::<f64>(&want.into_data(), tol);
            }
        }
    }

    /// Shapes the kernel does not take fall through (`None`) to the portable path.
    #[test]
    fn mismatched_shapes_fall_through() {
        let device = Default::default();
        let z = |s: [usize; 4]| p(Tensor::<B, 4>::zeros(s, &device));
        assert!(
            super::forward(&z([1, 2, 3, 4]), &z([1, 2, 5, 3]), &z([1, 2, 5, 4]), 1.0, 8).is_none()
        );
        assert!(
            super::forward(&z([1, 2, 3, 4]), &z([1, 2, 5, 4]), &z([1, 2, 6, 4]), 1.0, 8).is_none()
        );
        assert!(
            super::forward(&z([1, 2, 0, 4]), &z([1, 2, 5, 4]), &z([1, 2, 5, 4]), 1.0, 8).is_none()
        );
    }
}
