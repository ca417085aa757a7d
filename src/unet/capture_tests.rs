//! [`UNet2DConditionModel::capture_with_hook`]: the same maps as the whole forward, and the
//! pass stops after the block of the last wanted site (the layers after it are never offered
//! to the hook).

use burn::tensor::{Distribution, Tensor};

use super::*;
use crate::attention::test_util::{Probe, check_capture};

type B = crate::TestBackend;

#[test]
fn capture_stops_after_the_last_wanted_block_with_the_same_maps() {
    let device = Default::default();
    let config = UNet2DConditionConfig::tiny();
    let unet = config.init::<B>(&device);
    let sites = unet.sites().to_vec();
    let n = sites.len();
    let normal = Distribution::Normal(0.0, 1.0);
    let sample = Tensor::<B, 4>::random([2, config.in_channels, 8, 8], normal, &device);
    let ctx = Tensor::<B, 3>::random([2, 5, config.cross_attention_dim], normal, &device);
    let t = Tensor::<B, 1>::from_floats([10.0, 700.0], &device);
    // Every cross-attention site alone, and the first and last together.
    let cross: Vec<usize> = sites
        .iter()
        .filter(|s| s.kind == AttentionKind::Cross)
        .map(|s| s.index)
        .collect();
    let mut cases: Vec<Vec<usize>> = cross.iter().map(|&i| vec![i]).collect();
    cases.push(vec![cross[0], cross[cross.len() - 1]]);
    let mut stopped_early = 0;
    for wanted in cases {
        let mut full = Probe::<B>::new(&wanted);
        unet.forward_with_hook(sample.clone(), t.clone(), ctx.clone(), &mut full);
        let mut part = Probe::<B>::new(&wanted);
        unet.capture_with_hook(sample.clone(), t.clone(), ctx.clone(), &mut part);
        // The pass runs the blocks up to the last wanted site's.
        let last = *wanted.iter().max().unwrap();
        let end = 1
            + (0..n)
                .filter(|&j| sites[j].block == sites[last].block)
                .max()
                .unwrap();
        check_capture(&full, &part, n, end);
        stopped_early += usize::from(end < n);
    }
    assert!(
        stopped_early >= 2,
        "the tiny UNet has cross sites before its last block"
    );
    // A hook that wants nothing runs nothing: only the scan asks.
    let mut none = Probe::<B>::new(&[]);
    unet.capture_with_hook(sample, t, ctx, &mut none);
    assert_eq!(none.asked.borrow().len(), n);
    assert!(none.got.is_empty());
}
