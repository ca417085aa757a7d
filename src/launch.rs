//! Running backend-generic code on a backend chosen at run time, as the binaries do with
//! `--backend`: which backends exist is a matter of cargo features (`ndarray`, `wgpu`, `cuda`),
//! and [`launch`] / [`launch_autodiff`] name the missing feature instead of failing later.
//!
//! ```
//! use ctcal::attention::AttentionBackend;
//! use ctcal::launch::{BackendKind, OnBackend, launch};
//!
//! struct Name;
//! impl OnBackend for Name {
//!     type Output = String;
//!     fn run<B: AttentionBackend>(self, device: &B::Device) -> String {
//!         B::name(device)
//!     }
//! }
//! let name = launch(BackendKind::Ndarray, Name).unwrap();
//! assert!(name.contains("ndarray"));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::attention::{AttentionBackend, AutodiffAttentionBackend};
use crate::error::{Error, Result};

/// A backend a binary can run on, each behind its cargo feature; every one computes in f32.
///
/// The default is the build's own: a build with `cuda` runs on CUDA, else one with `tch` on
/// LibTorch, else one with `wgpu` on wgpu, else ndarray (so `--features cuda` does not train on
/// the CPU unless told to). In settings files it is named as its cargo feature (`"cuda"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn-ndarray on the CPU (feature `ndarray`, the default).
    Ndarray,
    /// burn-wgpu: Vulkan, Metal or DX12 (feature `wgpu`).
    Wgpu,
    /// burn-cuda (feature `cuda`, or `cuda-untuned`).
    Cuda,
    /// burn-tch: PyTorch's kernels through LibTorch, on the CPU (feature `tch`).
    Tch,
}

impl BackendKind {
    /// Every kind, in the order listed in messages.
    pub const ALL: [BackendKind; 4] = [Self::Ndarray, Self::Wgpu, Self::Cuda, Self::Tch];

    /// Whether this build has the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda-untuned"),
            Self::Tch => cfg!(feature = "tch"),
        }
    }

    /// The cargo feature that adds it.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        }
    }

    fn check(self) -> Result<()> {
        if self.is_compiled() {
            return Ok(());
        }
        let built: Vec<String> = Self::ALL
            .iter()
            .filter(|k| k.is_compiled())
            .map(|k| k.to_string())
            .collect();
        Err(Error::Config(format!(
            "backend {self} is not compiled in: rebuild with --features {} (this build has: {})",
            self.feature(),
            built.join(", ")
        )))
    }
}

impl Default for BackendKind {
    fn default() -> Self {
        [Self::Cuda, Self::Tch, Self::Wgpu]
            .into_iter()
            .find(|k| k.is_compiled())
            .unwrap_or(Self::Ndarray)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feature())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.feature() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown backend {s:?}: expected ndarray, wgpu, cuda or tch"
                ))
            })
    }
}

/// Backend-generic code to run for inference: a struct holding its arguments.
pub trait OnBackend {
    /// What it returns.
    type Output;
    /// Runs on backend `B`.
    fn run<B: AttentionBackend>(self, device: &B::Device) -> Self::Output;
}

/// Backend-generic code to run for training (an autodiff backend).
pub trait OnAutodiffBackend {
    /// What it returns.
    type Output;
    /// Runs on backend `B`.
    fn run<B: AutodiffAttentionBackend>(self, device: &B::Device) -> Self::Output;
}

/// Runs `f` on the default device of backend `kind`, or says which feature is missing.
pub fn launch<F: OnBackend>(kind: BackendKind, f: F) -> Result<F::Output> {
    kind.check()?;
    match kind {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => Ok(f.run::<burn::backend::NdArray<f32>>(&Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(f.run::<burn::backend::Wgpu<f32>>(&Default::default())),
        #[cfg(feature = "cuda-untuned")]
        BackendKind::Cuda => Ok(f.run::<burn::backend::Cuda<f32>>(&Default::default())),
        #[cfg(feature = "tch")]
        BackendKind::Tch => Ok(f.run::<burn::backend::LibTorch<f32>>(&Default::default())),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked above"),
    }
}

/// Runs `f` on `Autodiff<kind>` (with burn's `BalancedCheckpointing` when `checkpointing`:
/// cheap activations are recomputed in the backward pass instead of kept; same gradients,
/// less memory), or says which feature is missing.
pub fn launch_autodiff<F: OnAutodiffBackend>(
    kind: BackendKind,
    checkpointing: bool,
    f: F,
) -> Result<F::Output> {
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    kind.check()?;
    macro_rules! on {
        ($b:ty) => {
            if checkpointing {
                Ok(f.run::<Autodiff<$b, BalancedCheckpointing>>(&Default::default()))
            } else {
                Ok(f.run::<Autodiff<$b>>(&Default::default()))
            }
        };
    }
    match kind {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => on!(burn::backend::NdArray<f32>),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => on!(burn::backend::Wgpu<f32>),
        #[cfg(feature = "cuda-untuned")]
        BackendKind::Cuda => on!(burn::backend::Cuda<f32>),
        #[cfg(feature = "tch")]
        BackendKind::Tch => on!(burn::backend::LibTorch<f32>),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_print_and_name_their_feature() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.to_string().parse::<BackendKind>().unwrap(), kind);
        }
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        let err = "tpu".parse::<BackendKind>().unwrap_err().to_string();
        assert!(err.contains("\"tpu\""), "{err}");
        if !cfg!(feature = "cuda-untuned") {
            struct Never;
            impl OnBackend for Never {
                type Output = ();
                fn run<B: AttentionBackend>(self, _: &B::Device) {
                    panic!("ran on a backend that is not compiled in")
                }
            }
            let err = launch(BackendKind::Cuda, Never).unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn the_default_is_the_builds_gpu_backend() {
        let default = BackendKind::default();
        assert!(default.is_compiled());
        let (cuda, tch) = (cfg!(feature = "cuda-untuned"), cfg!(feature = "tch"));
        // The test command builds wgpu in: its runs default to it, not to the CPU; the
        // default build (ndarray alone) runs on the CPU.
        if cfg!(feature = "wgpu") && !cuda && !tch {
            assert_eq!(default, BackendKind::Wgpu);
        }
        if !cfg!(feature = "wgpu") && !cuda && !tch {
            assert_eq!(default, BackendKind::Ndarray);
        }
        if cuda {
            assert_eq!(default, BackendKind::Cuda);
        }
    }
}
