//! [`im2col`] and [`col2im`] in one pass over host memory, one `(image, channel)` plane per
//! task on rayon's pool: burn-ndarray's versions of the [`columns`](super::columns) operations.
//!
//! The portable versions copy the padded input once, cut `kh * kw` strided views and stack
//! them (and the gradient goes back through as many zero-filled slice assignments); on
//! burn-ndarray, where every operation allocates and most run on one thread, that was more than
//! half of a training step's convolution time. Here each output element is written once.

use std::ops::AddAssign;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::columns::{self, Columns};

/// The element types the host loops handle (burn-ndarray's float types).
trait Value: Element + Copy + Default + Send + Sync + AddAssign {}
impl Value for f32 {}
impl Value for f64 {}

/// [`KernelBackend::im2col`](super::KernelBackend::im2col) on host memory; other dtypes take
/// the portable path.
pub(crate) fn im2col<B: Backend>(x: FloatTensor<B>, g: &Columns) -> FloatTensor<B> {
    let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    let device = x.device();
    let data = x.into_data();
    let out = match data.dtype {
        DType::F32 => im2col_plane::<f32>(&data, g),
        DType::F64 => im2col_plane::<f64>(&data, g),
        _ => None,
    };
    match out {
        Some(out) => Tensor::<B, 3>::from_data(out, &device)
            .into_primitive()
            .tensor(),
        None => columns::im2col::<B>(
            Tensor::<B, 4>::from_data(data, &device)
                .into_primitive()
                .tensor(),
            g,
        ),
    }
}

/// [`KernelBackend::col2im`](super::KernelBackend::col2im) on host memory; other dtypes take
/// the portable path.
pub(crate) fn col2im<B: Backend>(columns: FloatTensor<B>, g: &Columns) -> FloatTensor<B> {
    let columns = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(columns));
    let device = columns.device();
    let data = columns.into_data();
    let out = match data.dtype {
        DType::F32 => col2im_plane::<f32>(&data, g),
        DType::F64 => col2im_plane::<f64>(&data, g),
        _ => None,
    };
    match out {
        Some(out) => Tensor::<B, 4>::from_data(out, &device)
            .into_primitive()
            .tensor(),
        None => columns::col2im::<B>(
            Tensor::<B, 3>::from_data(data, &device)
                .into_primitive()
                .tensor(),
            g,
        ),
    }
}

/// For output index `o` along one axis and tap `k`: the input index, or `None` in the padding.
#[inline]
fn source(
    o: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    (o * stride + k * dilation)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// The range of output indices `o` whose input index for tap `k` lies inside `0..size`.
fn valid(
    out: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
) -> std::ops::Range<usize> {
    let start = (0..out).find(|&o| source(o, k, stride, dilation, pad, size).is_some());
    match start {
        Some(s) => {
            let end = (s..out)
                .take_while(|&o| source(o, k, stride, dilation, pad, size).is_some())
                .last()
                .map_or(s, |e| e + 1);
            s..end
        }
        None => 0..0,
    }
}

fn im2col_plane<T: Value>(data: &TensorData, g: &Columns) -> Option<TensorData> {
    let x = data.as_slice::<T>().ok()?;
    let [h, w] = g.input;
    let [h_out, w_out] = g.output();
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [top, left, ..] = g.padding;
    let l = h_out * w_out;
    let shape = g.shape();
    let mut out = vec![T::default(); shape.iter().product()];
    if l == 0 || h * w == 0 {
        return Some(TensorData::new(out, shape));
    }
    out.par_chunks_mut(kh * kw * l)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, plane)| {
            for i in 0..kh {
                for j in 0..kw {
                    let tap = &mut dst[(i * kw + j) * l..][..l];
                    let xs = valid(w_out, j, sw, dw, left, w);
                    for oy in valid(h_out, i, sh, dh, top, h) {
                        let iy = oy * sh + i * dh - top;
                        let row = &plane[iy * w..][..w];
                        let out_row = &mut tap[oy * w_out..][..w_out];
                        let x0 = xs.start * sw + j * dw - left;
                        if sw == 1 {
                            out_row[xs.clone()].copy_from_slice(&row[x0..x0 + xs.len()]);
                        } else {
                            for (n, ox) in xs.clone().enumerate() {
                                out_row[ox] = row[x0 + n * sw];
                            }
                        }
                    }
                }
            }
        });
    Some(TensorData::new(out, shape))
}

fn col2im_plane<T: Value>(data: &TensorData, g: &Columns) -> Option<TensorData> {
    let cols = data.as_slice::<T>().ok()?;
    let [h, w] = g.input;
    let [h_out, w_out] = g.output();
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [top, left, ..] = g.padding;
    let l = h_out * w_out;
    let shape = g.input_shape();
    let mut out = vec![T::default(); shape.iter().product()];
    if l == 0 || h * w == 0 {
        return Some(TensorData::new(out, shape));
    }
    out.par_chunks_mut(h * w)
        .zip(cols.par_chunks(kh * kw * l))
        .for_each(|(plane, src)| {
            for i in 0..kh {
                for j in 0..kw {
                    let tap = &src[(i * kw + j) * l..][..l];
                    let xs = valid(w_out, j, sw, dw, left, w);
                    for oy in valid(h_out, i, sh, dh, top, h) {
                        let iy = oy * sh + i * dh - top;
                        let row = &mut plane[iy * w..][..w];
                        let in_row = &tap[oy * w_out..][..w_out];
                        let x0 = xs.start * sw + j * dw - left;
                        for (n, ox) in xs.clone().enumerate() {
                            row[x0 + n * sw] += in_row[ox];
                        }
                    }
                }
            }
        });
    Some(TensorData::new(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;

    type B = TestBackend;

    fn geometries() -> Vec<Columns> {
        let g = |channels, input, kernel, stride, dilation, padding| Columns {
            batch: 2,
            channels,
            input,
            kernel,
            stride,
            dilation,
            padding,
        };
        vec![
            g(3, [9, 8], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            g(2, [9, 10], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            g(4, [7, 5], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),
            g(3, [8, 6], [2, 2], [2, 2], [1, 1], [0, 0, 0, 0]),
            g(2, [9, 7], [3, 2], [1, 2], [2, 1], [2, 0, 1, 1]),
            // Padding wider than the kernel reach: rows and columns of pure padding.
            g(1, [3, 4], [2, 3], [3, 1], [1, 2], [3, 2, 4, 3]),
        ]
    }

    /// Host loops against the portable tensor-operation versions, exactly (both only copy and
    /// add in f64; col2im's sums run in the same tap order).
    #[test]
    fn host_columns_match_the_portable_operations() {
        let device = Default::default();
        for (n, g) in geometries().into_iter().enumerate() {
            let x =
                Tensor::<B, 4>::random(g.input_shape(), Distribution::Normal(0.0, 1.0), &device);
            let p = |t: Tensor<B, 4>| t.into_primitive().tensor();
            let want = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(
                columns::im2col::<B>(p(x.clone()), &g),
            ));
            let got = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(im2col::<B>(p(x), &g)));
            assert_eq!(got.dims(), g.shape(), "case {n}");
            got.into_data().assert_eq(&want.into_data(), true);

            let c = Tensor::<B, 3>::random(g.shape(), Distribution::Normal(0.0, 1.0), &device);
            let q = |t: Tensor<B, 3>| t.into_primitive().tensor();
            let want = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
                columns::col2im::<B>(q(c.clone()), &g),
            ));
            let got = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(col2im::<B>(q(c), &g)));
            assert_eq!(got.dims(), g.input_shape(), "case {n}");
            got.into_data().assert_approx_eq::<f64>(
                &want.into_data(),
                burn::tensor::Tolerance::absolute(1e-12),
            );
        }
    }

    /// col2im is the adjoint of im2col: `<im2col(x), c> = <x, col2im(c)>`.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let device = Default::default();
        for (n, g) in geometries().into_iter().enumerate() {
            let x =
                Tensor::<B, 4>::random(g.input_shape(), Distribution::Normal(0.0, 1.0), &device);
            let c = Tensor::<B, 3>::random(g.shape(), Distribution::Normal(0.0, 1.0), &device);
            let cols = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(im2col::<B>(
                x.clone().into_primitive().tensor(),
                &g,
            )));
            let image = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(col2im::<B>(
                c.clone().into_primitive().tensor(),
                &g,
            )));
            let lhs = (cols * c).sum().into_scalar();
            let rhs = (x * image).sum().into_scalar();
            assert!(
                (lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0),
                "case {n}: {lhs} vs {rhs}"
            );
        }
    }
}
