//! [`SD3Transformer2DModel::capture_with_hook`]: the same maps as the whole forward, and the
//! pass stops after the transformer block of the last wanted site (the blocks after it are
//! never offered to the hook). A dual-attention block gives two sites to one block.

use burn::tensor::{Distribution, Tensor};

use super::*;
use crate::attention::test_util::{Probe, check_capture};

type B = crate::TestBackend;

#[test]
fn capture_stops_after_the_last_wanted_block_with_the_same_maps() {
    let device = Default::default();
    let config = SD3Transformer2DConfig::tiny().with_dual_attention_layers(vec![1]);
    let model = config.init::<B>(&device);
    let sites = model.sites().to_vec();
    let n = sites.len();
    assert_eq!(n, config.num_layers + 1, "one joint site a block, one dual");
    let normal = Distribution::Normal(0.0, 1.0);
    let sample = Tensor::<B, 4>::random([2, config.in_channels, 8, 8], normal, &device);
    let ctx = Tensor::<B, 3>::random([2, 5, config.joint_attention_dim], normal, &device);
    let pooled = Tensor::<B, 2>::random([2, config.pooled_projection_dim], normal, &device);
    let t = Tensor::<B, 1>::from_floats([20.0, 900.0], &device);
    let joint: Vec<usize> = sites
        .iter()
        .filter(|s| s.kind == AttentionKind::Joint)
        .map(|s| s.index)
        .collect();
    let mut cases: Vec<Vec<usize>> = joint.iter().map(|&i| vec![i]).collect();
    cases.push(vec![joint[0], joint[1]]);
    let mut stopped_early = 0;
    for wanted in cases {
        let run = |capture: bool| {
            let mut probe = Probe::<B>::new(&wanted);
            let args = (sample.clone(), t.clone(), ctx.clone(), pooled.clone());
            if capture {
                model.capture_with_hook(args.0, args.1, args.2, args.3, &mut probe);
            } else {
                model.forward_with_hook(args.0, args.1, args.2, args.3, &mut probe);
            }
            probe
        };
        let (full, part) = (run(false), run(true));
        // The pass runs the blocks up to the last wanted site's.
        let last = *wanted.iter().max().unwrap();
        let block = sites[last].transformer_block;
        let end = sites
            .iter()
            .filter(|s| s.transformer_block <= block)
            .count();
        check_capture(&full, &part, n, end);
        stopped_early += usize::from(end < n);
    }
    assert!(stopped_early >= 2, "blocks 0 and 1 are not the last");
    let mut none = Probe::<B>::new(&[]);
    model.capture_with_hook(sample, t, ctx, pooled, &mut none);
    assert_eq!(none.asked.borrow().len(), n);
    assert!(none.got.is_empty());
}
