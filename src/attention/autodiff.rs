//! [`AttentionBackend`] for `Autodiff<B, C>`: custom backward operations (burn-autodiff's
//! `Backward` trait) that keep `q`, `k`, `v`, the output and the row statistics (the
//! log-sum-exp), never the probabilities.
//!
//! The forward runs the inner backend's [`AttentionBackend::attention_forward`] (by default the
//! chunked computation; LibTorch's fused kernel on CUDA); the backward calls its
//! [`AttentionBackend::attention_backward`] (by default [`chunked::backward`]) and
//! [`chunked::logsumexp_backward`]. `q`, `k` and
//! `v` are checkpointed through burn's checkpointer, so a checkpointing strategy
//! (`BalancedCheckpointing`) may recompute them instead of keeping them.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;

use super::chunked;
use super::efficient::{AttentionBackend, primitive, tensor};

/// The backward of [`AttentionBackend::memory_efficient_attention`].
#[derive(Debug)]
struct EfficientAttentionBackward;

/// Checkpointed `q`, `k`, `v`, the saved output and row statistics, scale and chunk.
type AttentionState<B> = (
    NodeId,
    NodeId,
    NodeId,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
    usize,
);

impl<B: AttentionBackend> Backward<B, 3> for EfficientAttentionBackward {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_out = grads.consume::<B>(&ops.node);
        let (q, k, v, out, stats, scale, chunk) = ops.state;
        let [dq, dk, dv] = B::attention_backward(
            checkpointer.retrieve_node_output(q),
            checkpointer.retrieve_node_output(k),
            checkpointer.retrieve_node_output(v),
            out,
            stats,
            d_out,
            scale,
            chunk,
        );
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward of [`AttentionBackend::attention_logsumexp`].
#[derive(Debug)]
struct LogSumExpBackward;

impl<B: AttentionBackend> Backward<B, 2> for LogSumExpBackward {
    /// Checkpointed `q`, `k`, the saved log-sum-exp, scale and chunk.
    type State = (NodeId, NodeId, FloatTensor<B>, f64, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k] = ops.parents;
        let d_lse = grads.consume::<B>(&ops.node);
        let (q, k, lse, scale, chunk) = ops.state;
        let (dq, dk) = chunked::logsumexp_backward(
            tensor::<B>(checkpointer.retrieve_node_output(q)),
            tensor(checkpointer.retrieve_node_output(k)),
            tensor(lse),
            tensor(d_lse),
            scale,
            chunk,
        );
        for (node, grad) in [(node_q, dq), (node_k, dk)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, primitive(grad));
            }
        }
    }
}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    const NARROW_INPUTS: bool = B::NARROW_INPUTS;

    fn memory_efficient_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> FloatTensor<Self> {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        match EfficientAttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (qs, ks, vs) = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                );
                let (out, stats) =
                    B::attention_forward(q.primitive, k.primitive, v.primitive, scale, chunk);
                let state = (qs, ks, vs, out.clone(), stats, scale, chunk);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::memory_efficient_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                scale,
                chunk,
            )),
        }
    }

    fn attention_logsumexp(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        scale: f64,
        chunk: usize,
    ) -> FloatTensor<Self> {
        match LogSumExpBackward
            .prepare::<C>([q.node.clone(), k.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (qs, ks) = (prep.checkpoint(&q), prep.checkpoint(&k));
                let lse = B::attention_logsumexp(q.primitive, k.primitive, scale, chunk);
                prep.finish((qs, ks, lse.clone(), scale, chunk), lse)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_logsumexp(
                q.primitive,
                k.primitive,
                scale,
                chunk,
            )),
        }
    }
}
