//! [`KernelBackend`] for `Autodiff<B, C>`: `im2col` and `col2im` as tracked operations whose
//! backward is the other one on `B` (they are each other's adjoint), so a convolution's
//! gradient never goes through `kh * kw` slice assignments; neither keeps a tensor for its
//! backward, only the geometry. The SiLU and the GEGLU are one tracked operation each whose
//! backward is `B::silu_backward` / `B::geglu_backward` on the checkpointed input; the GroupNorm
//! one whose backward is `B::group_norm_backward` on its checkpointed input, `gamma` and the
//! saved statistics; the convolution of [`KernelBackend::convolve`] one whose input and weight
//! gradients are `B::conv2d_x_grad` and `B::conv2d_weight_grad`; the linear layer of
//! [`KernelBackend::linear_layer`] one with `B`'s three `linear_layer_*_grad`.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, FloatTensor};

use super::{Columns, ConvPath, KernelBackend};

/// The backward of [`KernelBackend::im2col`]: `col2im` of the columns' gradient.
#[derive(Debug)]
struct Im2colBackward(Columns);

impl<B: KernelBackend> Backward<B, 1> for Im2colBackward {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::col2im(grad, &self.0));
        }
    }
}

/// The backward of [`KernelBackend::col2im`]: `im2col` of the image's gradient.
#[derive(Debug)]
struct Col2imBackward(Columns);

impl<B: KernelBackend> Backward<B, 1> for Col2imBackward {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::im2col(grad, &self.0));
        }
    }
}

/// The backward of a one-input kernel whose gradient needs only its input: the SiLU
/// (`B::silu_backward`) and the GEGLU (`B::geglu_backward`), called on the checkpointed input
/// and the output's gradient.
struct InputGradBackward<B: Backend>(fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>);

impl<B: Backend> std::fmt::Debug for InputGradBackward<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputGradBackward")
    }
}

impl<B: KernelBackend> Backward<B, 1> for InputGradBackward<B> {
    type State = NodeId;

    fn backward(self, ops: Ops<NodeId, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = parent {
            grads.register::<B>(node.id, (self.0)(x, grad));
        }
    }
}

/// `forward(x)` as a tracked operation whose backward is `backward(x, grad)`.
fn input_grad_op<B: KernelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    forward: fn(FloatTensor<B>) -> FloatTensor<B>,
    backward: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match InputGradBackward(backward)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, forward(x.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    }
}

/// The backward of [`KernelBackend::linear_layer`]: `B::linear_layer_x_grad` (from the
/// checkpointed weight) and `B::linear_layer_weight_grad` (from the checkpointed input), each
/// kept only when the other's gradient is wanted, and `B::linear_layer_bias_grad`. The parents are `x`, the
/// weight and, with a bias, the bias.
#[derive(Debug)]
struct LinearBackward;

/// The checkpointed input (when the weight is tracked) and weight (when the input is).
type LinearState = (Option<NodeId>, Option<NodeId>);

impl LinearBackward {
    fn gradients<B: KernelBackend, const N: usize>(
        ops: Ops<LinearState, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let mut parents = ops.parents.into_iter();
        let (node_x, node_w, node_b) = (
            parents.next().flatten(),
            parents.next().flatten(),
            parents.next().flatten(),
        );
        if let (Some(node), Some(weight)) = (node_x, weight) {
            let weight = checkpointer.retrieve_node_output(weight);
            grads.register::<B>(node.id, B::linear_layer_x_grad(weight, grad.clone()));
        }
        if let (Some(node), Some(x)) = (node_w, x) {
            let x = checkpointer.retrieve_node_output(x);
            grads.register::<B>(node.id, B::linear_layer_weight_grad(x, grad.clone()));
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, B::linear_layer_bias_grad(grad));
        }
    }
}

impl<B: KernelBackend> Backward<B, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        Self::gradients::<B, 3>(ops, grads, cp)
    }
}

impl<B: KernelBackend> Backward<B, 2> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        Self::gradients::<B, 2>(ops, grads, cp)
    }
}

/// The backward of [`KernelBackend::group_norm`]: `B::group_norm_backward` on the
/// checkpointed input, `gamma` and the saved statistics; `groups` is its field.
#[derive(Debug)]
struct GroupNormBackward(usize);

/// Checkpointed `x`, then `gamma`, the mean and the reciprocal standard deviation.
type GroupNormState<B> = (NodeId, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

impl<B: KernelBackend> Backward<B, 3> for GroupNormBackward {
    type State = GroupNormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, rstd) = ops.state;
        let x = checkpointer.retrieve_node_output(x);
        let parts = B::group_norm_backward(x, gamma, mean, rstd, grad, self.0);
        for (node, grad) in ops.parents.into_iter().zip(parts) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward of [`KernelBackend::convolve`]: the input gradient from `B::conv2d_x_grad`,
/// the weight gradient from `B::conv2d_weight_grad`, burn's bias gradient.
#[derive(Debug)]
struct ConvolveBackward;

/// Checkpointed `x`, the weight, the bias and the options.
type ConvolveState<B> = (NodeId, FloatTensor<B>, FloatTensor<B>, ConvOptions<2>);

impl<B: KernelBackend> Backward<B, 3> for ConvolveBackward {
    type State = ConvolveState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, options) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
        if let Some(node) = node_w {
            let dw =
                B::conv2d_weight_grad(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_b {
            grads.register::<B>(
                node.id,
                B::conv2d_bias_backward(x.clone(), bias, grad.clone()),
            );
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::conv2d_x_grad(x, weight, grad, options));
        }
    }
}

impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    const CONV_PATH: ConvPath = B::CONV_PATH;
    const HALF_PRECISION: bool = B::HALF_PRECISION;

    fn im2col(x: FloatTensor<Self>, columns: &Columns) -> FloatTensor<Self> {
        Im2colBackward(*columns)
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateless(B::im2col(x.primitive, columns))
    }

    fn col2im(columns: FloatTensor<Self>, geometry: &Columns) -> FloatTensor<Self> {
        Col2imBackward(*geometry)
            .prepare::<C>([columns.node.clone()])
            .compute_bound()
            .stateless(B::col2im(columns.primitive, geometry))
    }

    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        input_grad_op::<B, C>(x, B::silu, B::silu_backward)
    }

    fn linear_layer(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
        match bias {
            Some(bias) => {
                let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
                match <LinearBackward as Backward<B, 3>>::prepare::<C>(LinearBackward, nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (
                            w_tracked.then(|| prep.checkpoint(&x)),
                            x_tracked.then(|| prep.checkpoint(&weight)),
                        );
                        let y =
                            B::linear_layer(x.primitive, weight.primitive, Some(bias.primitive));
                        prep.finish(state, y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(B::linear_layer(
                        x.primitive,
                        weight.primitive,
                        Some(bias.primitive),
                    )),
                }
            }
            None => {
                let nodes = [x.node.clone(), weight.node.clone()];
                match <LinearBackward as Backward<B, 2>>::prepare::<C>(LinearBackward, nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(mut prep) => {
                        let state = (
                            w_tracked.then(|| prep.checkpoint(&x)),
                            x_tracked.then(|| prep.checkpoint(&weight)),
                        );
                        prep.finish(state, B::linear_layer(x.primitive, weight.primitive, None))
                    }
                    OpsKind::UnTracked(prep) => {
                        prep.finish(B::linear_layer(x.primitive, weight.primitive, None))
                    }
                }
            }
        }
    }

    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        input_grad_op::<B, C>(x, B::geglu, B::geglu_backward)
    }

    fn convolve(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
        match ConvolveBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                let y = B::convolve(
                    x.primitive,
                    weight.primitive.clone(),
                    bias.primitive.clone(),
                    options.clone(),
                );
                prep.finish((xs, weight.primitive, bias.primitive, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::convolve(
                x.primitive,
                weight.primitive,
                bias.primitive,
                options,
            )),
        }
    }

    fn group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match GroupNormBackward(groups)
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                let (y, mean, rstd) = B::group_norm(
                    x.primitive,
                    gamma.primitive.clone(),
                    beta.primitive,
                    groups,
                    eps,
                );
                let state = (xs, gamma.primitive, mean.clone(), rstd.clone());
                (
                    prep.finish(state, y),
                    Self::from_inner(mean),
                    Self::from_inner(rstd),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, rstd) =
                    B::group_norm(x.primitive, gamma.primitive, beta.primitive, groups, eps);
                (
                    prep.finish(y),
                    Self::from_inner(mean),
                    Self::from_inner(rstd),
                )
            }
        }
    }
}
