//! Helpers of the attention tests of every backend and model: values out of a tensor, the
//! error measure they compare with, and a hook that records what it is offered.

use std::cell::RefCell;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{AttentionHook, AttentionSite};

/// The tensor's values as f64.
pub(crate) fn values<B: Backend>(t: Tensor<B, 4>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

/// `max|a - b| / max|b|` over equally long slices.
pub(crate) fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    diff / b.iter().map(|x| x.abs()).fold(f64::MIN_POSITIVE, f64::max)
}

/// Wants the sites whose indices are in `wanted`; records every site it is asked about, in
/// order, and the probabilities it receives.
pub(crate) struct Probe<B: Backend> {
    pub wanted: Vec<usize>,
    pub asked: RefCell<Vec<usize>>,
    pub got: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Probe<B> {
    pub fn new(wanted: &[usize]) -> Self {
        Self {
            wanted: wanted.to_vec(),
            asked: RefCell::new(Vec::new()),
            got: Vec::new(),
        }
    }
}

impl<B: Backend> AttentionHook<B> for Probe<B> {
    fn wants(&self, site: &AttentionSite) -> bool {
        self.asked.borrow_mut().push(site.index);
        self.wanted.contains(&site.index)
    }

    fn on_probs(&mut self, _site: &AttentionSite, _grid: [usize; 2], probs: Tensor<B, 4>) {
        self.got.push(probs);
    }
}
