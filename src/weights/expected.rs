//! The parameters a module expects, listed without materialising them.
//!
//! burn-store's `collect` calls `val()` on every parameter, which runs burn's random
//! initialisation of lazily-initialised weights: for a full-size UNet that is most of the
//! loading time, spent on values that are overwritten right after. This visitor reads only
//! paths, container types and `lazy_shape`s.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

use super::keys::to_diffusers_key;

/// One float parameter of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// Our module path, enum variants skipped (`down_blocks.0.resnets.0.norm1.gamma`).
    pub path: String,
    /// The diffusers key it loads from.
    pub key: String,
    /// Shape in PyTorch layout (`Linear` weights as `[out, in]`).
    pub shape: Vec<usize>,
    /// The burn shape.
    pub burn_shape: Vec<usize>,
}

#[derive(Default)]
struct Lister {
    path: Vec<String>,
    containers: Vec<String>,
    out: Vec<ExpectedTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Lister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.containers.pop();
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.join(".");
        let burn_shape = param.lazy_shape().to_vec();
        let module = self
            .containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"));
        let mut shape = burn_shape.clone();
        if module.map(String::as_str) == Some("Struct:Linear") && path.ends_with(".weight") {
            shape.reverse(); // PyTorch stores Linear weights as [out, in].
        }
        self.out.push(ExpectedTensor {
            key: to_diffusers_key(&path),
            path,
            shape,
            burn_shape,
        });
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn expected_tensors<B: Backend, M: Module<B>>(module: &M) -> Vec<ExpectedTensor> {
    let mut lister = Lister::default();
    module.visit(&mut lister);
    lister.out
}
