//! The column ("im2col") layout of a 2-D convolution's input, and the two operations between
//! it and the image: [`im2col`] gathers every kernel window into a column, [`col2im`] scatters
//! columns back, summing where windows overlap (the gradient of `im2col`, and vice versa).
//!
//! A convolution is then one matrix product `W [c_out, c_in*kh*kw] x columns`. These are the
//! portable versions, written with burn tensor operations (a padding copy, `kh * kw` strided
//! slices, one stack); backends override them through
//! [`KernelBackend::im2col`](super::KernelBackend::im2col) (burn-ndarray with one pass over
//! host memory, in `backend/host.rs`; `Autodiff` with each one's backward as the other).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Slice, Tensor, TensorPrimitive};

/// The geometry of one 2-D convolution's columns.
///
/// Columns are `[batch, channels * kh * kw, h_out * w_out]`; row `(c * kh + i) * kw + j` holds
/// input channel `c` at kernel tap `(i, j)`, so a weight `[c_out, c_in, kh, kw]` reshaped to
/// `[c_out, c_in * kh * kw]` multiplies them without a permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input `[height, width]`.
    pub input: [usize; 2],
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl Columns {
    /// Output `[h_out, w_out]`; zero where the kernel does not fit.
    pub fn output(&self) -> [usize; 2] {
        let [top, left, bottom, right] = self.padding;
        let extent = |size: usize, pad: usize, k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            if size + pad < span {
                0
            } else {
                (size + pad - span) / s + 1
            }
        };
        [
            extent(
                self.input[0],
                top + bottom,
                self.kernel[0],
                self.stride[0],
                self.dilation[0],
            ),
            extent(
                self.input[1],
                left + right,
                self.kernel[1],
                self.stride[1],
                self.dilation[1],
            ),
        ]
    }

    /// Kernel taps `kh * kw`.
    pub fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The columns' shape `[batch, channels * kh * kw, h_out * w_out]`.
    pub fn shape(&self) -> [usize; 3] {
        let [h_out, w_out] = self.output();
        [self.batch, self.channels * self.taps(), h_out * w_out]
    }

    /// The input's shape `[batch, channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.input[0], self.input[1]]
    }

    /// The strided window of tap `(i, j)` in the padded input (height and width slices).
    fn tap(&self, i: usize, j: usize) -> [Slice; 2] {
        let [h_out, w_out] = self.output();
        let view = |start: usize, stride: usize, len: usize| {
            Slice::new(
                start as isize,
                Some((start + stride * (len - 1) + 1) as isize),
                stride as isize,
            )
        };
        [
            view(i * self.dilation[0], self.stride[0], h_out),
            view(j * self.dilation[1], self.stride[1], w_out),
        ]
    }

    /// The padded input's `[height, width]`.
    fn padded(&self) -> [usize; 2] {
        let [top, left, bottom, right] = self.padding;
        [self.input[0] + top + bottom, self.input[1] + left + right]
    }
}

/// [`KernelBackend::im2col`](super::KernelBackend::im2col) in burn tensor operations.
///
/// # Shapes
/// - `x`: `[batch, channels, height, width]`; returns [`Columns::shape`]
pub fn im2col<B: Backend>(x: FloatTensor<B>, g: &Columns) -> FloatTensor<B> {
    let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    let [top, left, ..] = g.padding;
    let [hp, wp] = g.padded();
    let [h, w] = g.input;
    let x = if g.padded() != g.input {
        // Zeros in x's own type (burn's `pad` fills in the backend's default type).
        Tensor::<B, 4>::zeros([g.batch, g.channels, hp, wp], (&x.device(), x.dtype()))
            .slice_assign([0..g.batch, 0..g.channels, top..top + h, left..left + w], x)
    } else {
        x
    };
    let taps = (0..g.kernel[0])
        .flat_map(|i| (0..g.kernel[1]).map(move |j| (i, j)))
        .map(|(i, j)| {
            let [rows, cols] = g.tap(i, j);
            x.clone().slice([Slice::full(), Slice::full(), rows, cols])
        })
        .collect();
    Tensor::stack::<5>(taps, 2)
        .reshape(g.shape())
        .into_primitive()
        .tensor()
}

/// [`KernelBackend::col2im`](super::KernelBackend::col2im) in burn tensor operations: each tap's
/// rows added into its window of a zero padded image, the padding cut off.
///
/// # Shapes
/// - `columns`: [`Columns::shape`]; returns `[batch, channels, height, width]`
pub fn col2im<B: Backend>(columns: FloatTensor<B>, g: &Columns) -> FloatTensor<B> {
    let columns = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(columns));
    let [h_out, w_out] = g.output();
    let columns = columns.reshape([g.batch, g.channels, g.taps(), h_out, w_out]);
    let [hp, wp] = g.padded();
    let mut image = Tensor::<B, 4>::zeros(
        [g.batch, g.channels, hp, wp],
        (&columns.device(), columns.dtype()),
    );
    for i in 0..g.kernel[0] {
        for j in 0..g.kernel[1] {
            let [rows, cols] = g.tap(i, j);
            let window = [Slice::full(), Slice::full(), rows, cols];
            let t = i * g.kernel[1] + j;
            let tap = columns
                .clone()
                .slice([0..g.batch, 0..g.channels, t..t + 1, 0..h_out, 0..w_out])
                .reshape([g.batch, g.channels, h_out, w_out]);
            let sum = image.clone().slice(window) + tap;
            image = image.slice_assign(window, sum);
        }
    }
    let [top, left, ..] = g.padding;
    let [h, w] = g.input;
    image
        .slice([0..g.batch, 0..g.channels, top..top + h, left..left + w])
        .into_primitive()
        .tensor()
}
