//! Images to and from the VAE's pixel tensors: u8 RGB to `[-1, 1]`, channels first (diffusers
//! `VaeImageProcessor.preprocess` without resizing), and back with clamping and rounding
//! (`postprocess`: `(x / 2 + 0.5).clamp(0, 1) * 255`, rounded).
//!
//! For resizing and centre-cropping training images see [`crate::data::preprocess`].

use burn::tensor::{Tensor, TensorData, backend::Backend};
use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// A batch of equally sized RGB images as a `[batch, 3, height, width]` tensor in `[-1, 1]`
/// (`v / 127.5 - 1`).
pub fn images_to_tensor<B: Backend>(
    images: &[RgbImage],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let Some(first) = images.first() else {
        return Err(Error::Input("no images to convert".into()));
    };
    let (w, h) = first.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let mut values = Vec::with_capacity(images.len() * 3 * hu * wu);
    for (i, image) in images.iter().enumerate() {
        if image.dimensions() != (w, h) {
            return Err(Error::Input(format!(
                "image {i} is {}x{}, image 0 is {w}x{h}: a batch needs one size",
                image.width(),
                image.height()
            )));
        }
        for c in 0..3 {
            values.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
        }
    }
    let shape = [images.len(), 3, hu, wu];
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A `[batch, 3, height, width]` tensor in `[-1, 1]` back to RGB images: values outside the
/// range are clamped, then `round((x / 2 + 0.5) * 255)`.
pub fn tensor_to_images<B: Backend>(pixels: Tensor<B, 4>) -> Result<Vec<RgbImage>> {
    let [b, c, h, w] = pixels.dims();
    if c != 3 {
        return Err(Error::Input(format!(
            "an RGB image tensor needs 3 channels, got shape [{b}, {c}, {h}, {w}]"
        )));
    }
    let values: Vec<f32> = pixels
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| Error::Input(format!("cannot read the image tensor: {e:?}")))?;
    let to_u8 = |x: f32| ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
    let plane = h * w;
    Ok((0..b)
        .map(|i| {
            let base = i * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = base + y as usize * w + x as usize;
                Rgb([
                    to_u8(values[at]),
                    to_u8(values[at + plane]),
                    to_u8(values[at + 2 * plane]),
                ])
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    /// Layout (NCHW, rows then columns), the value map, the round trip, clamping and errors.
    #[test]
    fn round_trip_layout_and_clamping() {
        let device = Default::default();
        let a = RgbImage::from_fn(3, 2, |x, y| Rgb([(x * 100) as u8, (y * 255) as u8, 7]));
        let b = RgbImage::from_pixel(3, 2, Rgb([255, 0, 128]));
        let t = images_to_tensor::<TestBackend>(&[a.clone(), b.clone()], &device).unwrap();
        assert_eq!(t.dims(), [2, 3, 2, 3]);
        let v = t.to_data().to_vec::<f64>().unwrap();
        // Image 0, red channel, row 0: x * 100 / 127.5 - 1.
        for (x, got) in v[..3].iter().enumerate() {
            assert!((got - (x as f64 * 100.0 / 127.5 - 1.0)).abs() < 1e-6);
        }
        assert!((v[6 + 3] - 1.0).abs() < 1e-6, "image 0, green, row 1");
        assert!(
            (v[18 + 12 + 1] - (128.0 / 127.5 - 1.0)).abs() < 1e-6,
            "image 1, blue"
        );
        assert_eq!(tensor_to_images(t).unwrap(), vec![a, b.clone()]);

        let out = Tensor::<TestBackend, 4>::from_floats(
            [[[[-3.0, 0.0]], [[1.5, 0.5]], [[-1.0, 1.0]]]],
            &device,
        );
        let img = &tensor_to_images(out).unwrap()[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [128, 191, 255]); // 127.5 and 191.25 rounded

        let small = RgbImage::new(2, 2);
        let err = images_to_tensor::<TestBackend>(&[b, small], &device).unwrap_err();
        assert!(err.to_string().contains("image 1 is 2x2"), "{err}");
        let gray = Tensor::<TestBackend, 4>::zeros([1, 1, 2, 2], &device);
        assert!(tensor_to_images(gray).is_err());
    }
}
