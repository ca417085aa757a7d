//! Parameter bookkeeping the optimiser needs: stable ids, the global gradient norm, counts.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// Tracks the module path during a visit (enum variants skipped).
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.pop();
        }
    }
    fn id(&self, salt: &str) -> ParamId {
        // FNV-1a of "salt/path": the same model layout gives the same ids in every process.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in salt.bytes().chain([b'/']).chain(self.0.join(".").bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        ParamId::from(h)
    }
}

struct StableIds {
    path: PathStack,
    salt: String,
}

impl<B: Backend> ModuleMapper<B> for StableIds {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        Param::from_mapped_value(self.path.id(&self.salt), tensor, mapper)
    }
}

/// Gives every parameter an id derived from `salt` and its module path.
///
/// burn's optimiser state is keyed by [`ParamId`], which is random per process; with stable
/// ids a checkpointed optimiser state applies to the same parameters after a restart.
/// `salt` keeps two modules (the denoiser and the map auto-encoder) apart.
pub fn stable_ids<B: Backend, M: Module<B>>(module: M, salt: &str) -> M {
    module.map(&mut StableIds {
        path: PathStack::default(),
        salt: salt.to_string(),
    })
}

/// Sums `|g|^2` over the gradients of `module`'s parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// Multiplies the gradients of `module`'s parameters by a factor.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Moves the gradients of `module`'s parameters out of one set into another.
struct Take<'a, B: AutodiffBackend> {
    from: &'a mut GradientsParams,
    into: GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.register(param.id, g);
        }
    }
}

/// Moves the gradients of `part`'s parameters out of `grads` (a whole module's) into `into`
/// and returns it: a part's own set, for a part that steps with an optimiser of its own (a
/// text encoder's learning rate beside the denoiser's).
pub fn take_grads<B: AutodiffBackend, M: Module<B>>(
    part: &M,
    grads: &mut GradientsParams,
    into: GradientsParams,
) -> GradientsParams {
    let mut take = Take::<B> {
        from: grads,
        into,
        _b: std::marker::PhantomData,
    };
    part.visit(&mut take);
    take.into
}

/// The squared L2 norm of `module`'s gradients in `grads`, as a one-element tensor (no sync).
pub fn grad_sq_norm<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut v = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut v);
    v.total
}

/// Scales `module`'s gradients in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    });
}

/// Clips the global norm of two modules' gradients to `max_norm` (PyTorch's
/// `clip_grad_norm_`: one factor `max_norm / (norm + 1e-6)` for all, applied when the norm
/// exceeds `max_norm`); returns the norm before clipping.
///
/// burn's `GradientClipping::Norm` clips each parameter on its own, which is not what SD
/// training scripts do, hence this.
pub fn clip_global_norm<B: AutodiffBackend, M1: Module<B>, M2: Module<B>>(
    a: (&M1, &mut GradientsParams),
    b: (&M2, &mut GradientsParams),
    max_norm: f64,
) -> f64 {
    let total = match (grad_sq_norm(a.0, a.1), grad_sq_norm(b.0, b.1)) {
        (Some(x), Some(y)) => x + y,
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => return 0.0,
    };
    let norm = total.into_scalar().elem::<f64>().sqrt();
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        scale_grads(a.0, a.1, factor);
        scale_grads(b.0, b.1, factor);
    }
    norm
}

/// Counts the scalar parameters of `module` that take gradients (on an autodiff backend) and
/// the total.
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> (usize, usize) {
    struct Counter(usize, usize);
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let n = param.lazy_shape().num_elements();
            self.1 += n;
            if param.val().is_require_grad() {
                self.0 += n;
            }
        }
    }
    let mut c = Counter(0, 0);
    module.visit(&mut c);
    (c.0, c.1)
}
