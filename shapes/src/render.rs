//! Rasterises a [`Scene`]: anti-aliased RGB (4x4 supersampling) and each object's coverage.

use super::scene::{BACKGROUND, Object, Scene, Shape};

/// Subsamples per pixel side.
const SUPERSAMPLE: usize = 4;

/// A drawn scene: pixels and, per object, the fraction of each pixel it covers.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Image side in pixels.
    pub size: usize,
    /// Row-major RGB, `size * size * 3` bytes.
    pub rgb: Vec<u8>,
    /// Per object (scene order), row-major coverage in `[0, 1]`, `size * size` values.
    pub coverage: Vec<Vec<f32>>,
}

impl Rendered {
    /// The object's mask: pixels it covers at least half of.
    pub fn mask(&self, object: usize) -> Vec<bool> {
        self.coverage[object].iter().map(|&c| c >= 0.5).collect()
    }

    /// The union of several objects' coverages (a noun naming them all), clamped to 1.
    pub fn union_coverage(&self, objects: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.size * self.size];
        for &o in objects {
            for (u, c) in out.iter_mut().zip(&self.coverage[o]) {
                *u = (*u + c).min(1.0);
            }
        }
        out
    }
}

/// Whether point `(x, y)` lies inside the object.
pub fn contains(o: &Object, x: f32, y: f32) -> bool {
    let [cx, cy] = o.center;
    let r = o.radius;
    match o.shape {
        Shape::Circle => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
        Shape::Square => (x - cx).abs() <= r && (y - cy).abs() <= r,
        // Apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r).
        Shape::Triangle => y <= cy + r && (x - cx).abs() <= (y - (cy - r)) / 2.0,
    }
}

/// Draws `scene` on a `size` x `size` canvas of [`BACKGROUND`]. Objects are assumed not to
/// overlap (the generator keeps them apart); where they would, the later one is drawn on top.
pub fn render(scene: &Scene, size: usize) -> Rendered {
    let n = size * size;
    let mut coverage = vec![vec![0.0f32; n]; scene.objects.len()];
    let step = 1.0 / SUPERSAMPLE as f32;
    let per_sample = 1.0 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for (cov, o) in coverage.iter_mut().zip(&scene.objects) {
        // Only the pixels of the object's bounding square can be covered.
        let lo = |c: f32| ((c - o.radius).floor().max(0.0)) as usize;
        let hi = |c: f32| ((c + o.radius).ceil().max(0.0) as usize).min(size);
        for py in lo(o.center[1])..hi(o.center[1]) {
            for px in lo(o.center[0])..hi(o.center[0]) {
                let mut inside = 0usize;
                for sy in 0..SUPERSAMPLE {
                    for sx in 0..SUPERSAMPLE {
                        let x = px as f32 + (sx as f32 + 0.5) * step;
                        let y = py as f32 + (sy as f32 + 0.5) * step;
                        inside += contains(o, x, y) as usize;
                    }
                }
                cov[py * size + px] = inside as f32 * per_sample;
            }
        }
    }
    let mut rgb = Vec::with_capacity(n * 3);
    for i in 0..n {
        let mut px = BACKGROUND.map(f32::from);
        for (cov, o) in coverage.iter().zip(&scene.objects) {
            let a = cov[i];
            if a > 0.0 {
                let c = o.colour.rgb();
                for k in 0..3 {
                    px[k] = px[k] * (1.0 - a) + c[k] as f32 * a;
                }
            }
        }
        rgb.extend(px.map(|v| v.round().clamp(0.0, 255.0) as u8));
    }
    Rendered {
        size,
        rgb,
        coverage,
    }
}
