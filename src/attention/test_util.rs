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

/// Checks a maps-only pass (`part`) against the whole forward (`full`) for the same wanted
/// sites of a model with `n` sites: the same maps, bit for bit; and that the pass asked about the
/// sites from the last one down to the last wanted one (its scan), then about each site of
/// `0..end` in forward order (a site asked about again at once counts once).
pub(crate) fn check_capture<B: Backend>(full: &Probe<B>, part: &Probe<B>, n: usize, end: usize) {
    let wanted = &part.wanted;
    assert_eq!(part.got.len(), wanted.len(), "maps of sites {wanted:?}");
    for (a, b) in part.got.iter().zip(&full.got) {
        assert_eq!(
            values(a.clone()),
            values(b.clone()),
            "maps of sites {wanted:?}"
        );
    }
    let last = *wanted.iter().max().expect("a wanted site");
    let asked = part.asked.borrow();
    let scan: Vec<usize> = (last..n).rev().collect();
    assert_eq!(asked[..scan.len()], scan[..], "scan for {wanted:?}");
    let mut forward = asked[scan.len()..].to_vec();
    forward.dedup();
    let offered: Vec<usize> = (0..end).collect();
    assert_eq!(forward, offered, "sites offered for {wanted:?}");
}
