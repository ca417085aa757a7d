//! [`LoraLinear`]: a `Linear` with an optional low-rank adapter, as PEFT's `lora.Linear` wraps
//! diffusers' attention projections (`peft/tuners/lora/layer.py`).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::Rng;

use super::linear::linear;
use crate::backend::KernelBackend;
use crate::error::{Error, Result};

/// A linear layer with an optional LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation").
///
/// `forward(x) = base(x) + scale * lora_b(lora_a(dropout(x)))`. Without an adapter
/// (`lora_a` and `lora_b` both `None`, the default of every model constructor) it is exactly
/// `base`. A fresh adapter has `lora_b = 0`, so attaching it changes nothing until trained.
///
/// Weight paths: `base.weight`/`base.bias` load from diffusers' `<projection>.weight`/`.bias`;
/// `lora_a.weight` and `lora_b.weight` are PEFT's `lora_A.weight` and `lora_B.weight` (see
/// [`crate::weights::keys`]). In burn's layout `lora_a.weight` is `[in, rank]` and
/// `lora_b.weight` is `[rank, out]`.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The wrapped projection.
    pub base: Linear<B>,
    /// Down projection `A` (`in -> rank`, no bias).
    pub lora_a: Option<Linear<B>>,
    /// Up projection `B` (`rank -> out`, no bias), zero when fresh.
    pub lora_b: Option<Linear<B>>,
    /// Dropout on the adapter's input; burn applies it only on autodiff backends.
    pub dropout: Option<Dropout>,
    /// `alpha / rank`, multiplying the adapter's output.
    pub scale: f64,
}

impl<B: Backend> From<Linear<B>> for LoraLinear<B> {
    fn from(base: Linear<B>) -> Self {
        Self::new(base)
    }
}

impl<B: KernelBackend> LoraLinear<B> {
    /// Runs the layer.
    ///
    /// # Shapes
    /// - `x`: `[..., in]`, returns `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (Some(a), Some(b)) = (&self.lora_a, &self.lora_b) else {
            return linear(&self.base, x);
        };
        let h = match &self.dropout {
            Some(dropout) => dropout.forward(x.clone()),
            None => x.clone(),
        };
        linear(&self.base, x) + linear(b, linear(a, h)).mul_scalar(self.scale)
    }
}

impl<B: Backend> LoraLinear<B> {
    /// Wraps `base` without an adapter.
    pub fn new(base: Linear<B>) -> Self {
        Self {
            base,
            lora_a: None,
            lora_b: None,
            dropout: None,
            scale: 1.0,
        }
    }

    /// `[in, out]` of the base layer (read without initialising lazy weights).
    pub fn dims(&self) -> [usize; 2] {
        let shape = self.base.weight.lazy_shape();
        [shape[0], shape[1]]
    }

    /// The adapter's rank, `None` without an adapter.
    pub fn rank(&self) -> Option<usize> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(_)) => Some(a.weight.lazy_shape()[1]),
            _ => None,
        }
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.rank().is_some()
    }

    /// `scale * A B` in burn's `[in, out]` layout: what the adapter adds to the base weight.
    pub fn delta_weight(&self) -> Option<Tensor<B, 2>> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => {
                Some(a.weight.val().matmul(b.weight.val()).mul_scalar(self.scale))
            }
            _ => None,
        }
    }

    /// The plain layer for inference: `W + scale * A B`, bias unchanged (the base layer itself
    /// without an adapter). The merged weight keeps the base weight's id and `require_grad`
    /// flag and is detached from the adapter's autodiff graph.
    pub fn merge(self) -> Linear<B> {
        let Some(delta) = self.delta_weight() else {
            return self.base;
        };
        let Linear { weight, bias } = self.base;
        let weight = weight.map(|w| {
            let require_grad = w.is_require_grad();
            (w + delta).detach().set_require_grad(require_grad)
        });
        Linear { weight, bias }
    }

    /// Attaches adapter weights given in burn's layout (`a: [in, rank]`, `b: [rank, out]`),
    /// replacing any adapter and keeping the dropout. Both become trainable parameters.
    pub fn with_adapter(self, a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64) -> Result<Self> {
        let [d_in, d_out] = self.dims();
        let [a_in, rank] = a.dims();
        let [b_rank, b_out] = b.dims();
        if a_in != d_in || b_out != d_out || b_rank != rank || rank == 0 {
            return Err(Error::Input(format!(
                "adapter shapes A {:?} and B {:?} do not fit a {d_in} -> {d_out} layer \
                 (expected [{d_in}, rank] and [rank, {d_out}], rank >= 1)",
                a.dims(),
                b.dims()
            )));
        }
        Ok(Self {
            lora_a: Some(no_bias(Param::from_tensor(a))),
            lora_b: Some(no_bias(Param::from_tensor(b))),
            scale,
            ..self
        })
    }

    /// Replaces the adapter's weights (burn layout) keeping their parameter ids and
    /// `require_grad` flags; the shapes must equal the current ones.
    pub(crate) fn set_adapter_weights(mut self, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Self {
        let set = |layer: Option<Linear<B>>, value: Tensor<B, 2>| {
            layer.map(|l| Linear {
                weight: l.weight.map(|old| {
                    let require_grad = old.is_require_grad();
                    value.set_require_grad(require_grad)
                }),
                bias: None,
            })
        };
        self.lora_a = set(self.lora_a, a);
        self.lora_b = set(self.lora_b, b);
        self
    }

    /// Attaches a fresh adapter: `A` drawn like PyTorch's default `Linear` init (PEFT's
    /// `kaiming_uniform_(a=sqrt(5))`, uniform in `±1/sqrt(in)`), `B = 0`.
    pub(crate) fn attach_fresh(
        self,
        rank: usize,
        scale: f64,
        dropout: f64,
        rng: &mut impl Rng,
    ) -> Self {
        let [d_in, d_out] = self.dims();
        let device = self.base.weight.lazy_device();
        let bound = 1.0 / (d_in as f64).sqrt();
        let values: Vec<f64> = (0..d_in * rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_data(TensorData::new(values, [d_in, rank]), &device);
        let b = Tensor::zeros([rank, d_out], &device);
        let layer = self
            .with_adapter(a, b, scale)
            .expect("fresh adapter shapes follow the layer");
        Self {
            dropout: (dropout > 0.0).then(|| DropoutConfig::new(dropout).init()),
            ..layer
        }
    }

    /// Number of adapter parameters (`rank * (in + out)`).
    pub fn adapter_params(&self) -> usize {
        let [d_in, d_out] = self.dims();
        self.rank().map_or(0, |r| r * (d_in + d_out))
    }
}

fn no_bias<B: Backend>(weight: Param<Tensor<B, 2>>) -> Linear<B> {
    Linear { weight, bias: None }
}
