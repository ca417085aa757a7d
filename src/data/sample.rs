//! One CPU-side sample, and the plain `f32` arrays samples and batches are made of.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::error::{Error, Result};
use crate::nouns::Nouns;

/// A row-major `f32` array with a fixed number of dimensions, kept on the CPU so the loader
/// thread never touches a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<const D: usize> {
    /// The shape.
    pub shape: [usize; D],
    /// The values, row-major; `shape.iter().product()` of them.
    pub values: Vec<f32>,
}

impl<const D: usize> HostTensor<D> {
    /// An array of `shape` holding `values`, checked to have the right count.
    pub fn new(shape: [usize; D], values: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(Error::Input(format!(
                "shape {shape:?} needs {n} values, got {}",
                values.len()
            )));
        }
        Ok(Self { shape, values })
    }

    /// The values of a burn tensor, read back to the CPU as `f32`.
    pub fn from_tensor<B: Backend>(tensor: Tensor<B, D>) -> Result<Self> {
        let shape = tensor.dims();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Input(format!("cannot read a tensor back: {e:?}")))?;
        Self::new(shape, values)
    }

    /// The array as a burn tensor on `device`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device)
    }

    /// The entries `rows` of the first axis (a data-parallel peer's share of a batch);
    /// `rows` must lie within the first axis.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        if rows.start > rows.end || rows.end > self.shape[0] {
            return Err(Error::Input(format!(
                "rows {rows:?} of an array of shape {:?}",
                self.shape
            )));
        }
        let stride: usize = self.shape[1..].iter().product();
        let mut shape = self.shape;
        shape[0] = rows.len();
        let values = self.values[rows.start * stride..rows.end * stride].to_vec();
        Ok(Self { shape, values })
    }

    /// `items` stacked along a new first axis; `E` must be `D + 1` and every shape equal.
    pub fn stack<const E: usize>(items: &[&HostTensor<D>]) -> Result<HostTensor<E>> {
        let first = items
            .first()
            .ok_or_else(|| Error::Input("cannot stack zero arrays".into()))?;
        if E != D + 1 {
            return Err(Error::Input(format!(
                "stacking {D}-d arrays gives {} dimensions, not {E}",
                D + 1
            )));
        }
        if let Some(other) = items.iter().find(|t| t.shape != first.shape) {
            return Err(Error::Input(format!(
                "cannot stack arrays of shapes {:?} and {:?}",
                first.shape, other.shape
            )));
        }
        let mut shape = [0; E];
        shape[0] = items.len();
        shape[1..].copy_from_slice(&first.shape);
        let values = items
            .iter()
            .flat_map(|t| t.values.iter().copied())
            .collect();
        Ok(HostTensor { shape, values })
    }
}

/// What a sample holds besides its caption.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// An image `[3, r, r]`, values in `[-1, 1]` (`x / 127.5 - 1`).
    Pixels(HostTensor<3>),
    /// Precomputed model inputs.
    Cached {
        /// VAE latents `[c, h, w]`, already scaled by the VAE's scaling factor.
        latents: HostTensor<3>,
        /// Text-encoder hidden states `[tokens, dim]`.
        hidden: HostTensor<2>,
        /// Pooled text embedding `[dim]` (SD 3); `None` for the UNet.
        pooled: Option<HostTensor<1>>,
    },
}

/// One loaded sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index in the dataset (its good rows, in metadata order).
    pub index: usize,
    /// 1-based line of its row in `metadata.jsonl`.
    pub line: usize,
    /// The caption.
    pub caption: String,
    /// Its nouns, as the row gives them.
    pub nouns: Nouns,
    /// Pixels or cached features.
    pub features: Features,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn stack_adds_a_leading_axis_and_rejects_mismatches() {
        let a = HostTensor::new([2, 1], vec![1.0, 2.0]).unwrap();
        let b = HostTensor::new([2, 1], vec![3.0, 4.0]).unwrap();
        let s: HostTensor<3> = HostTensor::stack(&[&a, &b]).unwrap();
        assert_eq!(s.shape, [2, 2, 1]);
        assert_eq!(s.values, [1.0, 2.0, 3.0, 4.0]);
        let c = HostTensor::new([1, 2], vec![0.0, 0.0]).unwrap();
        let err = HostTensor::<2>::stack::<3>(&[&a, &c]).unwrap_err();
        assert!(err.to_string().contains("[2, 1] and [1, 2]"), "{err}");
        assert!(HostTensor::<2>::stack::<2>(&[&a]).is_err());
        assert!(HostTensor::new([2, 2], vec![0.0]).is_err());
    }

    #[test]
    fn round_trips_through_a_burn_tensor() {
        let device = Default::default();
        let a = HostTensor::new([2, 3], vec![0.5, -1.0, 2.0, 3.0, 4.0, -0.25]).unwrap();
        let t = a.to_tensor::<TestBackend>(&device);
        assert_eq!(t.dims(), [2, 3]);
        assert_eq!(HostTensor::from_tensor(t).unwrap(), a);
    }
}
