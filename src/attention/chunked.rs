//! The query-chunked attention math, forward and backward, in plain tensor operations.
//!
//! These functions run on an inner (non-autodiff) backend: [`super::AttentionBackend`]'s
//! default forward and the backward of its autodiff operation call them. Each loop iteration
//! holds one `[batch, heads, chunk, n_k]` score block; no buffer ever holds the whole
//! `[batch, heads, n_q, n_k]` matrix. The backward follows FlashAttention-2's recurrences with
//! the probabilities recomputed from the saved row log-sum-exp `L`:
//! `P = exp(S - L)`, `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dO * O))`,
//! `dQ = dS K * scale`, `dK = dS^T Q * scale`.

use burn::tensor::{Tensor, backend::Backend};

/// Score elements (`batch * heads * chunk * n_k`) one chunk may hold by default:
/// 32 Mi elements, 128 MiB in f32.
pub const DEFAULT_CHUNK_ELEMENTS: usize = 32 << 20;

/// The default number of query rows per chunk: as many as keep one score block within
/// [`DEFAULT_CHUNK_ELEMENTS`], at least one.
pub fn default_chunk(batch: usize, heads: usize, n_k: usize) -> usize {
    (DEFAULT_CHUNK_ELEMENTS / (batch * heads * n_k).max(1)).max(1)
}

/// The query ranges `[start, start + len)` of the chunks covering `n_q` rows.
fn chunks(n_q: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..n_q)
        .step_by(chunk)
        .map(move |start| (start, chunk.min(n_q - start)))
}

/// `softmax(q k^T * scale) v` and the per-row log-sum-exp of the scaled scores.
///
/// # Shapes
/// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`, `v`: `[batch, heads, n_k, d_v]`
/// - returns (`[batch, heads, n_q, d_v]`, `[batch, heads, n_q, 1]`)
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    chunk: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let n_q = q.dims()[2];
    let kt = k.swap_dims(2, 3);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for (start, len) in chunks(n_q, chunk) {
        let s = q.clone().narrow(2, start, len).matmul(kt.clone()) * scale;
        let m = s.clone().max_dim(3);
        let e = (s - m.clone()).exp();
        let z = e.clone().sum_dim(3);
        // Normalise after the product: [chunk, d_v] is smaller than [chunk, n_k].
        outs.push(e.matmul(v.clone()) / z.clone());
        lses.push(m + z.log());
    }
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2))
}

/// The per-row log-sum-exp of `q k^T * scale` alone (no values).
///
/// # Shapes
/// - `q`: `[batch, heads, n_q, d]`, `k`: `[batch, heads, n_k, d]`; returns `[batch, heads, n_q, 1]`
pub fn logsumexp<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
    chunk: usize,
) -> Tensor<B, 4> {
    let n_q = q.dims()[2];
    let kt = k.swap_dims(2, 3);
    let lses = chunks(n_q, chunk)
        .map(|(start, len)| {
            let s = q.clone().narrow(2, start, len).matmul(kt.clone()) * scale;
            let m = s.clone().max_dim(3);
            m.clone() + (s - m).exp().sum_dim(3).log()
        })
        .collect();
    Tensor::cat(lses, 2)
}

/// The saved forward state of one attention call.
#[derive(Debug, Clone)]
pub struct Saved<B: Backend> {
    /// Queries `[batch, heads, n_q, d]`.
    pub q: Tensor<B, 4>,
    /// Keys `[batch, heads, n_k, d]`.
    pub k: Tensor<B, 4>,
    /// Values `[batch, heads, n_k, d_v]`.
    pub v: Tensor<B, 4>,
    /// Output `[batch, heads, n_q, d_v]`.
    pub out: Tensor<B, 4>,
    /// Row log-sum-exp `[batch, heads, n_q, 1]`.
    pub lse: Tensor<B, 4>,
}

/// Gradients `(dQ, dK, dV)` of the attention output given `d_out`, recomputing the
/// probabilities chunk by chunk from the saved log-sum-exp.
///
/// # Shapes
/// - `d_out`: `[batch, heads, n_q, d_v]`; returns tensors shaped like `q`, `k`, `v`
pub fn backward<B: Backend>(
    saved: Saved<B>,
    d_out: Tensor<B, 4>,
    scale: f64,
    chunk: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let Saved { q, k, v, out, lse } = saved;
    let n_q = q.dims()[2];
    // D = rowsum(dO * O): the softmax Jacobian's diagonal correction, [b, h, n_q, 1].
    let dd = (d_out.clone() * out).sum_dim(3);
    let (kt, vt) = (k.clone().swap_dims(2, 3), v.clone().swap_dims(2, 3));
    let mut dk = k.zeros_like();
    let mut dv = v.zeros_like();
    let mut dqs = Vec::new();
    for (start, len) in chunks(n_q, chunk) {
        let qc = q.clone().narrow(2, start, len);
        let doc = d_out.clone().narrow(2, start, len);
        let p = (qc.clone().matmul(kt.clone()) * scale - lse.clone().narrow(2, start, len)).exp();
        dv = dv + p.clone().swap_dims(2, 3).matmul(doc.clone());
        let dp = doc.matmul(vt.clone());
        let ds = p * (dp - dd.clone().narrow(2, start, len));
        dqs.push(ds.clone().matmul(k.clone()) * scale);
        dk = dk + ds.swap_dims(2, 3).matmul(qc) * scale;
    }
    (Tensor::cat(dqs, 2), dk, dv)
}

/// Gradients `(dQ, dK)` of the row log-sum-exp given its gradient `d_lse`
/// (`dL_i/dS_ij = P_ij`), recomputing the probabilities chunk by chunk.
///
/// # Shapes
/// - `d_lse`, `lse`: `[batch, heads, n_q, 1]`; returns tensors shaped like `q`, `k`
pub fn logsumexp_backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    d_lse: Tensor<B, 4>,
    scale: f64,
    chunk: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let n_q = q.dims()[2];
    let kt = k.clone().swap_dims(2, 3);
    let mut dk = k.zeros_like();
    let mut dqs = Vec::new();
    for (start, len) in chunks(n_q, chunk) {
        let qc = q.clone().narrow(2, start, len);
        let p = (qc.clone().matmul(kt.clone()) * scale - lse.clone().narrow(2, start, len)).exp();
        let ds = p * d_lse.clone().narrow(2, start, len);
        dqs.push(ds.clone().matmul(k.clone()) * scale);
        dk = dk + ds.swap_dims(2, 3).matmul(qc) * scale;
    }
    (Tensor::cat(dqs, 2), dk)
}
