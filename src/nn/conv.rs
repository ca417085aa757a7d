//! 2-D convolution as one matrix product over the input's kernel windows (im2col).
//!
//! burn-cubecl built without autotuning (`cuda-untuned`) runs every convolution and both of
//! its gradients with its direct kernel; an SD 2.1 training step then took 9 s on an H200
//! (benches/RESULTS.md). Written as slices, one concatenation and a matmul, the convolution
//! runs on the backend's matmul kernel and differentiates through ops burn already has, at the
//! cost of the `kh * kw`-times larger column tensor (377 MB for SD 2.1's first level at batch
//! 8 in f32). The columns come from the backend's [`KernelBackend::im2col`], whose gradient is
//! its [`KernelBackend::col2im`]. [`conv2d`] picks it where the backend's [`KernelBackend::CONV_PATH`] says so:
//! on cubecl backends built without autotuning, and for overlapping windows on ndarray, whose
//! own convolution backward is slow (two training steps of the shapes benchmark's UNet, 32x32
//! RGB, batch 16, 3x3 convolutions, start-up included, took 45.8 s with burn-ndarray's
//! convolution and 7.4 s with this one on 2 cores). Autotuned cubecl keeps burn's
//! implicit-GEMM kernels (the wgpu tests ran 15% slower on im2col), and patch embeddings
//! (kernel = stride) keep burn's convolution everywhere.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::backend::{Columns, ConvPath, KernelBackend};

/// `conv.forward(x)`, or [`im2col_conv2d`] where the backend's [`ConvPath`] says so.
pub fn conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let im2col = match B::CONV_PATH {
        ConvPath::Native => false,
        ConvPath::NativeOwnWeightGrad => return own_weight_grad_conv2d(conv, x),
        ConvPath::Kernel => return kernel_conv2d(conv, x),
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

/// `conv.forward(x)` through [`KernelBackend::convolve`] (its own weight gradient under
/// autodiff) for ungrouped convolutions with bias and explicit padding; `conv.forward`
/// otherwise.
fn own_weight_grad_conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let (Some(padding), Some(bias)) = (explicit_padding(&conv.padding), &conv.bias) else {
        return conv.forward(x);
    };
    let [top, left, bottom, right] = padding;
    if conv.groups != 1 || top != bottom || left != right {
        return conv.forward(x);
    }
    let options = ConvOptions::new(conv.stride, [top, left], conv.dilation, 1);
    let float = |t: Tensor<B, 1>| t.into_primitive().tensor();
    let y = B::convolve(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        float(bias.val()),
        options,
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// `conv.forward(x)` through [`KernelBackend::convolve`] (its own gradients under autodiff)
/// for ungrouped convolutions with symmetric explicit padding and a bias; [`im2col_conv2d`]
/// otherwise.
fn kernel_conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match explicit_padding(&conv.padding) {
        Some([top, left, bottom, right])
            if conv.groups == 1 && conv.bias.is_some() && top == bottom && left == right =>
        {
            own_weight_grad_conv2d(conv, x)
        }
        _ => im2col_conv2d(conv, x),
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

/// `conv.forward(x)` computed as `W [c_out, c_in*kh*kw] x columns [c_in*kh*kw, h_out*w_out]`
/// per image, the columns gathered by the backend's [`KernelBackend::im2col`] (one pass over
/// memory on burn-ndarray; slices of the padded input elsewhere). Grouped convolutions, `Same`
/// padding and kernels larger than the padded input use `conv.forward`.
///
/// # Shapes
/// - `x`: `[batch, c_in, h, w]`; returns `[batch, c_out, h_out, w_out]`
pub fn im2col_conv2d<B: KernelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(padding) = explicit_padding(&conv.padding) else {
        return conv.forward(x);
    };
    let [batch, c_in, h, w] = x.dims();
    let geometry = Columns {
        batch,
        channels: c_in,
        input: [h, w],
        kernel: conv.kernel_size,
        stride: conv.stride,
        dilation: conv.dilation,
        padding,
    };
    let [h_out, w_out] = geometry.output();
    if conv.groups != 1 || h_out * w_out == 0 {
        return conv.forward(x);
    }
    let columns: Tensor<B, 3> =
        if geometry.taps() == 1 && conv.stride == [1, 1] && padding == [0; 4] {
            x.reshape([batch, c_in, h * w])
        } else {
            Tensor::from_primitive(TensorPrimitive::Float(B::im2col(
                x.into_primitive().tensor(),
                &geometry,
            )))
        };
    let k = geometry.shape()[1];
    // Rows ordered (c_in, kh, kw) like the columns: a reshape, no permutation.
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    // Batch dimension 1, broadcast by the matmul (an expanded weight is copied per image on
    // burn-ndarray, whose matmul makes its operands contiguous).
    let weight = weight.reshape([1, c_out, k]);
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
    type ConvFn = fn(&Conv2d<A>, Tensor<A, 4>) -> Tensor<A, 4>;

    fn max_rel(a: Tensor<A, 4>, b: Tensor<A, 4>) -> f64 {
        let scale = b.clone().abs().max().into_scalar();
        (a - b).abs().max().into_scalar() / scale
    }

    /// [`im2col_conv2d`] and the own-weight-gradient operation (with burn-ndarray's default
    /// weight gradient: this checks its wiring) against burn's convolution (ndarray, f64):
    /// outputs and the gradients of the input, weight and bias, for SD's 3x3 padded, strided
    /// 3x3 (downsamplers), 1x1 (shortcuts) and 2x2 stride-2 (SD 3 patchify) cases, with odd
    /// sizes, a dilation and no bias.
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
            // A fixed random cotangent, so every output element's gradient path counts.
            let r = want.random_like(Distribution::Normal(0.0, 1.0)).detach();
            let gw = (want.clone() * r.clone()).sum().backward();
            let ours: [(&str, ConvFn); 2] = [
                ("im2col", im2col_conv2d),
                ("own weight gradient", own_weight_grad_conv2d),
            ];
            for (path, conv2d) in ours {
                let n = format!("{n} ({path})");
                let got = conv2d(&conv, x.clone());
                assert_eq!(got.dims(), want.dims(), "case {n}");
                assert!(
                    max_rel(got.clone(), want.clone()) < 1e-12,
                    "case {n}: output"
                );
                let gg = (got * r.clone()).sum().backward();
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
                    let db =
                        (g1 - g2.clone()).abs().max().into_scalar() / g2.abs().max().into_scalar();
                    assert!(db < 1e-12, "case {n}: db {db:e}");
                }
            }
        }
    }
}
