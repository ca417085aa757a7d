//! An exponential moving average of the trained weights (diffusers' `EMAModel`), kept as a
//! detached copy of the model so it can be exported like the model itself.

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// `ema = decay * ema + (1 - decay) * live` over the parameters that take gradients; frozen
/// parameters are shared with the live model and never copied.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    /// The averaged model (no parameter requires gradients).
    pub model: M,
    /// The decay per optimiser step.
    pub decay: f64,
}

/// The live values of the trained parameters (a `GradientsParams` used as a typed
/// `ParamId -> tensor` map).
struct Collect<'a>(&'a mut GradientsParams);

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.0.register(param.id, value.inner());
        }
    }
}

struct Blend<'a> {
    live: &'a mut GradientsParams,
    decay: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Blend<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(live) = self.live.remove::<B::InnerBackend, D>(param.id) else {
            return param;
        };
        let (id, old, mapper) = param.consume();
        let blended = old.inner().mul_scalar(self.decay) + live.mul_scalar(1.0 - self.decay);
        Param::from_mapped_value(id, Tensor::from_inner(blended), mapper)
    }
}

impl<M> Ema<M> {
    /// Starts the average at the model's current weights.
    pub fn new<B: AutodiffBackend>(model: &M, decay: f64) -> Self
    where
        M: AutodiffModule<B> + Clone,
    {
        Self {
            model: model.clone().no_grad(),
            decay,
        }
    }

    /// Moves the average one step towards `live` (same layout and parameter ids).
    pub fn update<B: AutodiffBackend>(&mut self, live: &M)
    where
        M: AutodiffModule<B> + Clone,
    {
        let mut values = GradientsParams::new();
        live.visit(&mut Collect(&mut values));
        let model = self.model.clone();
        self.model = model.map(&mut Blend {
            live: &mut values,
            decay: self.decay,
        });
    }
}
