//! Mixed precision: master weights and optimiser state in the backend's float type (f32),
//! forward and backward in a narrower compute type (bf16), the recipe of PyTorch's autocast
//! with f32 parameters.
//!
//! burn tensors carry their dtype at run time, and `cast` has a backward (it casts the
//! gradient back), so no second backend type is needed: [`cast_params`] makes a copy of the
//! model whose parameters are cast to the compute type *on the autodiff graph* each step. The optimiser
//! keeps working on the f32 model; `GradientsParams::from_grads(grads, &model)` finds f32
//! gradients on its parameters because every cast's backward runs before them.
//!
//! What stays wide, as SD needs it: normalisation layers (their parameters are not cast and
//! [`in_accumulation`] runs them on an upcast input), softmax and attention statistics
//! ([`upcast`] in the attention helpers), the timestep features (computed wide, cast to the
//! sample's type like diffusers' `t_emb.to(sample.dtype)`), the model's output and hence the
//! losses. On an f64 backend the same code runs f32 compute under f64 masters, which is how the
//! CPU tests check it: ndarray refuses to mix dtypes in one operation, so a tensor left in the
//! wrong type fails loudly there.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The type statistics and losses run in on `B`: the backend's own float type (f32 under
/// f32 masters, f64 in the CPU tests).
///
/// On a backend whose float type is itself bf16 (`Cuda<bf16>`), that is bf16: every tensor the
/// crate creates (map resizing, loss accumulators, noise) is in the backend's type, so
/// upcasting only some of them would mix types. Train such models with f32 masters and
/// [`cast_params`] instead, which keeps norms, softmax and losses in f32.
pub fn accumulation_dtype<B: Backend>() -> DType {
    B::FloatElem::dtype()
}

fn width(dtype: DType) -> usize {
    match dtype {
        DType::F64 => 8,
        DType::F32 | DType::Flex32 => 4,
        _ => 2,
    }
}

/// Whether `dtype` is narrower than [`accumulation_dtype`].
pub fn is_narrow<B: Backend>(dtype: DType) -> bool {
    width(dtype) < width(accumulation_dtype::<B>())
}

/// `t` in `dtype`; no operation when it already is.
pub fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

/// `t` in [`accumulation_dtype`] when it is narrower; unchanged otherwise.
pub fn upcast<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if is_narrow::<B>(t.dtype()) {
        t.cast(FloatDType::from(accumulation_dtype::<B>()))
    } else {
        t
    }
}

/// Runs `f` (a normalisation) on `x` upcast, and returns its result in `x`'s type.
pub fn in_accumulation<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    cast_to(f(upcast(x)), dtype)
}

/// The compute type of a training step (diffusers' `--mixed_precision no|fp16|bf16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MixedPrecision {
    /// Forward and backward in the master type.
    #[default]
    No,
    /// bf16 compute under the master weights.
    Bf16,
    /// f16 compute under the master weights (no loss scaling: prefer bf16).
    Fp16,
}

impl MixedPrecision {
    /// The compute type, `None` for [`MixedPrecision::No`].
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            MixedPrecision::No => None,
            MixedPrecision::Bf16 => Some(FloatDType::BF16),
            MixedPrecision::Fp16 => Some(FloatDType::F16),
        }
    }
}

/// Module types whose parameters stay in the master type (their inputs are upcast).
const WIDE_MODULES: [&str; 3] = ["Struct:GroupNorm", "Struct:LayerNorm", "Struct:RmsNorm"];

/// Casts every float parameter outside [`WIDE_MODULES`] to `dtype`, keeping parameter ids.
struct CastParams {
    dtype: FloatDType,
    wide_depth: usize,
}

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if self.wide_depth > 0 || WIDE_MODULES.contains(&container_type) {
            self.wide_depth += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.wide_depth = self.wide_depth.saturating_sub(1);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.wide_depth > 0 {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let cast = cast_to(tensor, self.dtype.into());
        Param::from_mapped_value(id, cast, mapper)
    }
}

/// A compute copy of `module`: every float parameter outside normalisation layers cast to
/// `dtype` on the autodiff graph (parameter ids kept), norms left in the master type.
///
/// Build one per training step from the master model (the casts are graph nodes of that
/// step), run the step on it, and step the master with `GradientsParams::from_grads(grads,
/// &master)`: each cast's backward hands its gradient to the master parameter in the master's
/// type. The [`Denoiser`](crate::denoiser::Denoiser) implementations cast their inputs to their
/// parameters' type and return their prediction in [`accumulation_dtype`], so the losses run
/// wide.
pub fn cast_params<B: Backend, M: Module<B>>(module: &M, dtype: FloatDType) -> M {
    module.clone().map(&mut CastParams {
        dtype,
        wide_depth: 0,
    })
}

#[cfg(all(test, feature = "ndarray"))]
mod tests;
