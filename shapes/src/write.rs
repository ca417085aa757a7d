//! Writes scenes as an image folder the trainer reads (`metadata.jsonl` with `text` and
//! `nouns`), plus each scene's objects and a mask image, and reads them back for evaluation.

use std::io::{BufRead, BufReader};
use std::path::Path;

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use super::render::{Rendered, render};
use super::scene::Scene;
use ctcal::error::{Error, Result};
use ctcal::viz::save_png;
use ctcal::weights::write_atomic;

/// One row of a shapes `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapesRow {
    /// The image, relative to the folder.
    pub file_name: String,
    /// The caption.
    pub text: String,
    /// The caption's nouns (shape words), supervised by CTCal.
    pub nouns: Vec<String>,
    /// The mask image: pixel value `k + 1` where object `k` covers at least half the pixel.
    pub mask: String,
    /// What the image shows.
    pub scene: Scene,
}

/// Renders `scenes` at `size` into `dir` (`00000.png`, `masks/00000.png`, `metadata.jsonl`).
/// The metadata is written last, through a temporary file, so an interrupted run leaves no
/// folder that claims images it lacks.
pub fn write_dataset(dir: &Path, scenes: &[Scene], size: usize) -> Result<Vec<ShapesRow>> {
    let masks = dir.join("masks");
    std::fs::create_dir_all(&masks).map_err(|e| Error::io(&masks, e))?;
    let mut rows = Vec::with_capacity(scenes.len());
    let mut jsonl = String::new();
    for (i, scene) in scenes.iter().enumerate() {
        let r = render(scene, size);
        let file_name = format!("{i:05}.png");
        let mask = format!("masks/{i:05}.png");
        let img = RgbImage::from_raw(size as u32, size as u32, r.rgb.clone())
            .ok_or_else(|| Error::Input(format!("shapes: bad image buffer for scene {i}")))?;
        save_png(&img, &dir.join(&file_name))?;
        save_png(&mask_image(&r), &dir.join(&mask))?;
        let row = ShapesRow {
            file_name,
            text: scene.caption(),
            nouns: scene.claim.nouns(),
            mask,
            scene: scene.clone(),
        };
        jsonl.push_str(&serde_json::to_string(&row).map_err(|e| Error::Input(e.to_string()))?);
        jsonl.push('\n');
        rows.push(row);
    }
    write_atomic(&dir.join("metadata.jsonl"), jsonl.as_bytes())?;
    Ok(rows)
}

/// Reads the rows of a folder written by [`write_dataset`]; a bad line is an error naming the
/// file and line.
pub fn read_rows(dir: &Path) -> Result<Vec<ShapesRow>> {
    let path = dir.join("metadata.jsonl");
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(&path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| Error::Data {
            file: path.clone(),
            line: i + 1,
            message: format!("not a shapes row: {e}"),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn mask_image(r: &Rendered) -> GrayImage {
    let mut m = GrayImage::new(r.size as u32, r.size as u32);
    for k in 0..r.coverage.len() {
        for (i, inside) in r.mask(k).into_iter().enumerate() {
            if inside {
                let (x, y) = ((i % r.size) as u32, (i / r.size) as u32);
                m.put_pixel(x, y, image::Luma([k as u8 + 1]));
            }
        }
    }
    m
}
