//! An image folder with `metadata.jsonl`, as diffusers' `train_text_to_image.py` reads it.
//!
//! Preprocessing follows that script's defaults: resize so the short side is the resolution
//! (bilinear: the triangle filter), centre-crop to a square, scale `x / 127.5 - 1` to
//! `[-1, 1]`, channels first. The crop offset is `floor((size - resolution) / 2)`.

use std::path::Path;

use image::imageops::{FilterType, crop_imm, resize};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::{
    BadRow, BadRowPolicy, BadRows, Dataset, Features, HostTensor, Metadata, MetadataRow, Sample,
};
use crate::error::{Error, Result};

/// Captioned images listed by a `metadata.jsonl`, decoded when loaded.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    metadata: Metadata,
    resolution: u32,
    policy: BadRowPolicy,
}

impl ImageFolder {
    /// Reads `metadata` (the `metadata.jsonl` path) for images preprocessed to
    /// `resolution x resolution`, and every listed image's header: a file that is no image or
    /// whose size is over [`MAX_IMAGE_SIDE`] or [`MAX_ASPECT_RATIO`] is a bad row now, before
    /// any training; `policy` handles bad rows now and images that fail to decode later.
    pub fn open(metadata: &Path, resolution: u32, policy: BadRowPolicy) -> Result<Self> {
        if resolution == 0 {
            return Err(Error::Config("image resolution must be at least 1".into()));
        }
        let mut metadata = Metadata::read(metadata, policy)?;
        metadata.retain_rows(policy, |path, _| image_size(path).map(drop))?;
        Ok(Self {
            metadata,
            resolution,
            policy,
        })
    }

    /// The parsed metadata (good rows).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Rows left out when the metadata was read.
    pub fn skipped(&self) -> &BadRows {
        &self.metadata.skipped
    }

    /// The side of the square images.
    pub fn resolution(&self) -> u32 {
        self.resolution
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.metadata.rows.len()
    }

    fn policy(&self) -> BadRowPolicy {
        self.policy
    }

    fn source(&self) -> Option<&Path> {
        Some(&self.metadata.path)
    }

    fn row(&self, index: usize) -> Option<&MetadataRow> {
        self.metadata.rows.get(index)
    }

    fn skipped(&self) -> BadRows {
        self.metadata.skipped.clone()
    }

    fn load(&self, index: usize) -> std::result::Result<Sample, BadRow> {
        let row = &self.metadata.rows[index];
        let pixels = load_image(&self.metadata.file_path(row), self.resolution).map_err(|e| {
            self.metadata
                .bad_row(row, format!("{}: {e}", row.file_name))
        })?;
        Ok(Sample {
            index,
            line: row.line,
            caption: row.text.clone(),
            nouns: row.nouns(),
            features: Features::Pixels(pixels),
        })
    }
}

/// The longest image side a data folder may hold (the decoder's limit too).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The most elongated image accepted: resizing the short side to the training resolution
/// multiplies the long side too, so a 1 x 4,000,000 strip would need gigabytes.
pub const MAX_ASPECT_RATIO: u32 = 16;

/// Decodes the image at `path` (format guessed from its bytes) and [`preprocess`]es it. Its
/// size is read from the header first and checked against [`MAX_IMAGE_SIDE`] and
/// [`MAX_ASPECT_RATIO`] before any pixel is decoded (the decoder keeps `image`'s default
/// allocation limit); the error names the size or is the decoder's message.
pub fn load_image(path: &Path, resolution: u32) -> std::result::Result<HostTensor<3>, String> {
    let decoder = image_decoder(path)?;
    check_size(decoder.dimensions())?;
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| format!("unreadable image: {e}"))?;
    Ok(preprocess(&image.to_rgb8(), resolution))
}

/// The width and height of the image at `path`, read from its header (no pixel is decoded)
/// and checked against [`MAX_IMAGE_SIDE`] and [`MAX_ASPECT_RATIO`]; the error says why not.
pub fn image_size(path: &Path) -> std::result::Result<(u32, u32), String> {
    let size = image_decoder(path)?.dimensions();
    check_size(size)?;
    Ok(size)
}

/// A decoder for the image at `path`, its format guessed from its bytes; only the header has
/// been read.
fn image_decoder(path: &Path) -> std::result::Result<impl ImageDecoder, String> {
    ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("cannot read image: {e}"))?
        .into_decoder()
        .map_err(|e| format!("unreadable image: {e}"))
}

fn check_size((w, h): (u32, u32)) -> std::result::Result<(), String> {
    if w.max(h) > MAX_IMAGE_SIDE {
        return Err(format!(
            "image of {w}x{h} pixels: a side is over the limit of {MAX_IMAGE_SIDE}"
        ));
    }
    if w.min(h) == 0 || w.max(h) / w.min(h) >= MAX_ASPECT_RATIO {
        return Err(format!(
            "image of {w}x{h} pixels: more elongated than {MAX_ASPECT_RATIO}:1, it cannot be \
             resized and centre-cropped to a square"
        ));
    }
    Ok(())
}

/// Resizes `image` so its short side is `resolution` (triangle filter), centre-crops it to
/// `resolution x resolution` and returns `[3, resolution, resolution]` in `[-1, 1]`.
pub fn preprocess(image: &RgbImage, resolution: u32) -> HostTensor<3> {
    let (w, h) = image.dimensions();
    let scale = resolution as f64 / w.min(h) as f64;
    let size = |side: u32| ((side as f64 * scale).round() as u32).max(resolution);
    let (nw, nh) = (size(w), size(h));
    let resized = resize(image, nw, nh, FilterType::Triangle);
    let cropped = crop_imm(
        &resized,
        (nw - resolution) / 2,
        (nh - resolution) / 2,
        resolution,
        resolution,
    )
    .to_image();
    let r = resolution as usize;
    let mut values = vec![0.0; 3 * r * r];
    for (x, y, pixel) in cropped.enumerate_pixels() {
        for (c, &v) in pixel.0.iter().enumerate() {
            values[(c * r + y as usize) * r + x as usize] = v as f32 / 127.5 - 1.0;
        }
    }
    HostTensor {
        shape: [3, r, r],
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::TempDir;
    use crate::data::{Batches, LoaderConfig};
    use crate::nouns::Nouns;
    use image::Rgb;
    use std::sync::Arc;

    const RED: Rgb<u8> = Rgb([255, 0, 0]);
    const BLUE: Rgb<u8> = Rgb([0, 0, 255]);

    fn at(t: &HostTensor<3>, c: usize, y: usize, x: usize) -> f32 {
        let [_, h, w] = t.shape;
        t.values[(c * h + y) * w + x]
    }

    #[test]
    fn a_solid_colour_maps_to_its_exact_value() {
        let image = RgbImage::from_pixel(8, 4, Rgb([51, 102, 204]));
        let t = preprocess(&image, 2);
        assert_eq!(t.shape, [3, 2, 2]);
        for (c, want) in [(0, -0.6), (1, -0.2), (2, 0.6)] {
            for (y, x) in [(0, 0), (1, 1)] {
                assert!(
                    (at(&t, c, y, x) - want).abs() < 1e-6,
                    "c{c} {}",
                    at(&t, c, y, x)
                );
            }
        }
    }

    #[test]
    fn resize_then_centre_crop_keeps_the_middle() {
        // 16x8: red columns 0..8, blue 8..16. Short side 8 -> 4 halves the width to 8, the
        // crop keeps resized columns 2..6, i.e. source columns 4..12. Resized column x averages
        // source columns 2x-1..=2x+2 with triangle weights 1/8, 3/8, 3/8, 1/8: column 2 is all
        // red, 5 all blue, 3 is 7/8 red (223.125 -> 223) and 1/8 blue (31.875 -> 32).
        let image = RgbImage::from_fn(16, 8, |x, _| if x < 8 { RED } else { BLUE });
        let t = preprocess(&image, 4);
        assert_eq!(t.shape, [3, 4, 4]);
        let v = |u: u8| u as f32 / 127.5 - 1.0;
        for y in 0..4 {
            let row = |c| (0..4).map(|x| at(&t, c, y, x)).collect::<Vec<_>>();
            assert_eq!(row(0), [1.0, v(223), v(32), -1.0], "red, row {y}");
            assert_eq!(row(1), [-1.0; 4], "green, row {y}");
            assert_eq!(row(2), [-1.0, v(32), v(223), 1.0], "blue, row {y}");
        }
    }

    #[test]
    fn portrait_images_are_cropped_vertically() {
        // 3 wide, 6 tall: already at the short side; rows 1..4 survive the crop.
        let image = RgbImage::from_fn(3, 6, |_, y| if y < 2 { RED } else { BLUE });
        let t = preprocess(&image, 3);
        let red: Vec<f32> = (0..3).map(|y| at(&t, 0, y, 1)).collect();
        assert_eq!(red, [1.0, -1.0, -1.0]);
    }

    /// `red.png`, `blue.png`; `broken.png` (no image at all) and `cut.png` (a PNG whose header
    /// is whole but whose pixel data is cut short).
    fn folder_with_broken_images() -> TempDir {
        let dir = TempDir::new("image-folder");
        RgbImage::from_pixel(4, 4, RED)
            .save(dir.path("red.png"))
            .unwrap();
        RgbImage::from_pixel(6, 4, BLUE)
            .save(dir.path("blue.png"))
            .unwrap();
        dir.write("broken.png", b"these bytes are not a png");
        let noisy = RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 7 + y * 13) as u8, x as u8, 9]));
        noisy.save(dir.path("cut.png")).unwrap();
        let bytes = std::fs::read(dir.path("cut.png")).unwrap();
        dir.write("cut.png", &bytes[..bytes.len() - 40]);
        dir.write(
            "metadata.jsonl",
            concat!(
                "{\"file_name\": \"red.png\", \"text\": \"a red square\"}\n",
                "\n",
                "{\"file_name\": \"broken.png\", \"text\": \"a broken square\"}\n",
                "{\"file_name\": \"blue.png\", \"text\": \"a blue square\", \"nouns\": [\"square\"]}\n",
                "{\"file_name\": \"cut.png\", \"text\": \"a cut square\"}\n",
            )
            .as_bytes(),
        );
        dir
    }

    #[test]
    fn loads_images_and_reports_unreadable_ones_by_line() {
        let dir = folder_with_broken_images();
        let metadata = dir.path("metadata.jsonl");
        let folder = ImageFolder::open(&metadata, 2, BadRowPolicy::Skip).unwrap();
        // Not an image: found from its header when the folder opens.
        assert_eq!(folder.len(), 3);
        assert_eq!(folder.skipped().len(), 1);
        let msg = folder.skipped().0[0].to_string();
        let want = format!("{}:3: broken.png: unreadable image", metadata.display());
        assert!(msg.starts_with(&want), "{msg}");

        let blue = folder.load(1).unwrap();
        assert_eq!(blue.line, 4);
        assert_eq!(blue.nouns, Nouns::Words(vec!["square".into()]));
        let Features::Pixels(p) = &blue.features else {
            panic!("pixels expected")
        };
        assert_eq!(p.shape, [3, 2, 2]);
        assert_eq!(at(p, 2, 1, 1), 1.0);
        // A whole header over cut pixel data fails only when decoded.
        let bad = folder.load(2).unwrap_err();
        assert_eq!(bad.line, 5);
        let msg = bad.to_string();
        let want = format!("{}:5: cut.png: unreadable image", metadata.display());
        assert!(msg.starts_with(&want), "{msg}");

        // Through the batcher: the cut image is skipped and reported, never a panic. A
        // batch of 3 without drop_last reads the whole epoch, whatever its order.
        let config = LoaderConfig::new(3, 1).with_drop_last(false);
        let mut batches = Batches::new(Arc::new(folder), &config, None).unwrap();
        let batch = batches.next_batch().unwrap();
        let mut lines = batch.lines.clone();
        lines.sort_unstable();
        assert_eq!(lines, [1, 4]);
        assert_eq!(batch.skipped.len(), 1);
        assert_eq!(batch.skipped.0[0].line, 5);
        assert_eq!(
            batch
                .pixels::<crate::TestBackend>(&Default::default())
                .unwrap()
                .dims(),
            [2, 3, 2, 2]
        );
    }

    /// Opening checks every image's header: under `Fail` the first bad one stops it, naming
    /// the metadata line; an image over the limits is a bad row, with its size.
    #[test]
    fn opening_checks_every_header() {
        let dir = folder_with_broken_images();
        let metadata = dir.path("metadata.jsonl");
        let err = ImageFolder::open(&metadata, 2, BadRowPolicy::Fail).unwrap_err();
        assert!(matches!(err, Error::Data { line: 3, .. }), "{err:?}");
        image::GrayImage::new(1, 40)
            .save(dir.path("broken.png"))
            .unwrap();
        let folder = ImageFolder::open(&metadata, 2, BadRowPolicy::Skip).unwrap();
        let msg = folder.skipped().to_string();
        assert!(msg.contains(":3: broken.png: image of 1x40"), "{msg}");
    }

    /// Sizes are refused from the header: a strip (the resize would make it huge) and a side
    /// over the limit, each named with its size; the limits' edges pass.
    #[test]
    fn oversized_and_elongated_images_are_refused_before_decoding() {
        let dir = TempDir::new("image-limits");
        let write = |name: &str, w: u32, h: u32| {
            let path = dir.path(name);
            image::GrayImage::new(w, h).save(&path).unwrap();
            path
        };
        let msg = load_image(&write("strip.png", 1, 40), 2).unwrap_err();
        assert!(msg.contains("1x40") && msg.contains("16:1"), "{msg}");
        let msg = load_image(&write("tall.png", 2, MAX_IMAGE_SIDE + 1), 2).unwrap_err();
        assert!(msg.contains("2x16385") && msg.contains("limit"), "{msg}");
        assert!(load_image(&write("edge.png", 2, 31), 2).is_ok());
    }

    #[test]
    fn fail_policy_stops_at_the_undecodable_image() {
        let dir = folder_with_broken_images();
        let metadata = dir.path("metadata.jsonl");
        std::fs::remove_file(dir.path("broken.png")).unwrap();
        dir.write(
            "metadata.jsonl",
            concat!(
                "{\"file_name\": \"red.png\", \"text\": \"a red square\"}\n",
                "{\"file_name\": \"cut.png\", \"text\": \"a cut square\"}\n",
                "{\"file_name\": \"blue.png\", \"text\": \"a blue square\"}\n",
            )
            .as_bytes(),
        );
        let folder = ImageFolder::open(&metadata, 2, BadRowPolicy::Fail).unwrap();
        let config = LoaderConfig::new(3, 1);
        let mut batches = Batches::new(Arc::new(folder), &config, None).unwrap();
        let err = batches.next_batch().unwrap_err();
        assert!(matches!(err, Error::Data { line: 2, .. }), "{err:?}");
        assert!(
            err.to_string().contains("cut.png: unreadable image"),
            "{err}"
        );
    }
}
