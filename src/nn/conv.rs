//! 2-D convolution as one matrix product over shifted views of the input (im2col).
//!
//! burn-cubecl built without autotuning (`cuda-untuned`) runs every convolution and both of
//! its gradients with its direct kernel; an SD 2.1 training step then took 9 s on an H200
//! (benches/RESULTS.md). Written as slices, one concatenation and a matmul, the convolution
//! runs on the backend's matmul kernel and differentiates through ops burn already has, at the
//! cost of the `kh * kw`-times larger column tensor (377 MB for SD 2.1's first level at batch
//! 8 in f32). [`conv2d`] picks it where the backend's [`KernelBackend::CONV_PATH`] says so:
//! on cubecl backends built without autotuning, and for overlapping windows on ndarray, whose
//! own convolution backward is slow (two training steps of the shapes benchmark's UNet, 32x32
//! RGB, batch 16, 3x3 convolutions, start-up included, took 45.8 s with burn-ndarray's
//! convolution and 7.4 s with this one on 2 cores). Autotuned cubecl keeps burn's
//! implicit-GEMM kernels (the wgpu tests ran 15% slower on im2col), and patch embeddings
//! (kernel = stride) keep burn's convolution everywhere.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Slice, Tensor};

use crate::backend::{ConvPath, KernelBackend};

/// `conv.forward(x)`, or [`im2col_conv2d`] where the backend's [`ConvPath`] says so.
pub fn conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let im2col = match B::CONV_PATH {
        ConvPath::Native => false,
        ConvPath::Im2col => true,
        // Overlapping windows (kernel larger than stride) and pointwise kernels; patch
        // embeddings (kernel = stride) keep burn's convolution.
        ConvPath::Im2colOverlapping => {
            conv.kernel_size[0] > conv.stride[0]
                || conv.kernel_size[1] > conv.stride[1]
                || conv.kernel_size == [1, 1]
        }
    };
    if im2col {
        im2col_conv2d(conv, x)
    } else {
        conv.forward(x)
    }
}

/// The explicit `(top, left, bottom, right)` padding of `conv`, or `None` for `Same`.
fn explicit_padding(padding: &PaddingConfig2d) -> Option<[usize; 4]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        PaddingConfig2d::Same => None,
    }
}

/// `conv.forward(x)` computed as `W [c_out, kh*kw*c_in] x columns [kh*kw*c_in, h_out*w_out]`
/// per image, the columns being the `kh * kw` strided views of the padded input stacked along
/// the channel axis. Grouped convolutions and `Same` padding use `conv.forward`.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`; returns `[batch, c_out, h_out, w_out]`
pub fn im2col_conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some([top, left, bottom, right]) = explicit_padding(&conv.padding) else {
        return conv.forward(x);
    };
    if conv.groups != 1 {
        return conv.forward(x);
    }
    let [batch, c_in, h, w] = x.dims();
    let ([kh, kw], [sh, sw], [dh, dw]) = (conv.kernel_size, conv.stride, conv.dilation);
    let (hp, wp) = (h + top + bottom, w + left + right);
    let h_out = (hp - dh * (kh - 1) - 1) / sh + 1;
    let w_out = (wp - dw * (kw - 1) - 1) / sw + 1;
    let x = if top + left + bottom + right > 0 {
        // Zeros in x's own type (burn's `pad` fills in the backend default type).
        let zeros = Tensor::<B, 4>::zeros([batch, c_in, hp, wp], (&x.device(), x.dtype()));
        zeros.slice_assign([0..batch, 0..c_in, top..top + h, left..left + w], x)
    } else {
        x
    };
    let columns = if kh * kw == 1 && sh * sw == 1 {
        x
    } else {
        let view = |start: usize, stride: usize, len: usize| {
            Slice::new(
                start as isize,
                Some((start + stride * (len - 1) + 1) as isize),
                stride as isize,
            )
        };
        let taps = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| (i, j)))
            .map(|(i, j)| {
                x.clone().slice([
                    Slice::full(),
                    Slice::full(),
                    view(i * dh, sh, h_out),
                    view(j * dw, sw, w_out),
                ])
            })
            .collect();
        Tensor::cat(taps, 1)
    };
    let k = kh * kw * c_in;
    let columns = columns.reshape([batch, k, h_out * w_out]);
    // Tap-major rows, as the columns are stacked: [c_out, kh, kw, c_in].
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    let weight = weight
        .permute([0, 2, 3, 1])
        .reshape([1, c_out, k])
        .expand([batch, c_out, k]);
    let out = weight.matmul(columns);
    let out = match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, c_out, 1]),
        None => out,
    };
    out.reshape([batch, c_out, h_out, w_out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    type A = Autodiff<TestBackend>;

    fn max_rel(a: Tensor<A, 4>, b: Tensor<A, 4>) -> f64 {
        let scale = b.clone().abs().max().into_scalar();
        (a - b).abs().max().into_scalar() / scale
    }

    /// Against burn's convolution (ndarray, f64): outputs and the gradients of the input,
    /// weight and bias, for SD's 3x3 padded, strided 3x3 (downsamplers), 1x1 (shortcuts) and
    /// 2x2 stride-2 (SD 3 patchify) cases, with odd sizes, a dilation and no bias.
    #[test]
    fn matches_burn_convolution_and_its_gradients() {
        let device = Default::default();
        let cases = [
            // (c_in, c_out, kernel, stride, dilation, padding, bias, h, w)
            (
                5,
                7,
                [3, 3],
                [1, 1],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                true,
                9,
                8,
            ),
            (
                4,
                6,
                [3, 3],
                [2, 2],
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                true,
                9,
                10,
            ),
            (
                6,
                3,
                [1, 1],
                [1, 1],
                [1, 1],
                PaddingConfig2d::Valid,
                true,
                7,
                5,
            ),
            (
                3,
                8,
                [2, 2],
                [2, 2],
                [1, 1],
                PaddingConfig2d::Valid,
                true,
                8,
                6,
            ),
            (
                4,
                5,
                [3, 2],
                [1, 2],
                [2, 1],
                PaddingConfig2d::Explicit(2, 0, 1, 1),
                false,
                9,
                7,
            ),
        ];
        for (n, (c_in, c_out, kernel, stride, dilation, padding, bias, h, w)) in
            cases.into_iter().enumerate()
        {
            let conv = Conv2dConfig::new([c_in, c_out], kernel)
                .with_stride(stride)
                .with_dilation(dilation)
                .with_padding(padding)
                .with_bias(bias)
                .init::<A>(&device);
            let x =
                Tensor::<A, 4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
            let want = conv.forward(x.clone());
            let got = im2col_conv2d(&conv, x.clone());
            assert_eq!(got.dims(), want.dims(), "case {n}");
            assert!(
                max_rel(got.clone(), want.clone()) < 1e-12,
                "case {n}: output"
            );
            // A fixed random cotangent, so every output element's gradient path counts.
            let r = want.random_like(Distribution::Normal(0.0, 1.0)).detach();
            let gw = (want * r.clone()).sum().backward();
            let gg = (got * r).sum().backward();
            let rel = |a: Tensor<TestBackend, 4>, b: Tensor<TestBackend, 4>| {
                let scale = b.clone().abs().max().into_scalar();
                (a - b).abs().max().into_scalar() / scale
            };
            let dx = rel(x.grad(&gg).unwrap(), x.grad(&gw).unwrap());
            let dw = rel(
                conv.weight.val().grad(&gg).unwrap(),
                conv.weight.val().grad(&gw).unwrap(),
            );
            assert!(dx < 1e-12 && dw < 1e-12, "case {n}: dx {dx:e}, dw {dw:e}");
            if let Some(b) = &conv.bias {
                let (g1, g2) = (b.val().grad(&gg).unwrap(), b.val().grad(&gw).unwrap());
                let db = (g1 - g2.clone()).abs().max().into_scalar() / g2.abs().max().into_scalar();
                assert!(db < 1e-12, "case {n}: db {db:e}");
            }
        }
    }
}
