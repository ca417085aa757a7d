//! A rule-based detector for shapes images and the caption checks built on it (the
//! benchmark's mini-CompBench): each pixel takes the nearest palette colour or the background,
//! same-colour 4-connected components become objects; a component with a quarter of its pixels
//! in the upper half of its bounding box is a triangle; otherwise one that fills three corners
//! of its box (or almost all of it) is a square, and the rest are circles.

use serde::{Deserialize, Serialize};

use super::scene::{BACKGROUND, Claim, Colour, Shape};

/// A found object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Palette colour of its pixels.
    pub colour: Colour,
    /// Shape read from the fill ratio.
    pub shape: Shape,
    /// Centre of the bounding box `[x, y]` in pixels (the generator places objects by their
    /// box centre; a triangle's centroid lies lower).
    pub center: [f32; 2],
    /// Pixels in the component.
    pub area: usize,
    /// Area over bounding-box area.
    pub fill: f32,
}

/// The detector's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detector {
    /// Components smaller than this many pixels are noise.
    pub min_area: usize,
    /// Fill ratio at or above which a component is a square even with fewer than three box
    /// corners filled.
    pub square_fill: f32,
    /// Share of a component's pixels in the upper half of its bounding box below which it is a
    /// triangle (ideal: 1/4 for a triangle, 1/2 for circles and squares).
    pub triangle_top_share: f32,
}

impl Default for Detector {
    /// Thresholds halfway between the ideal values (fill: square 1, circle pi/4 = 0.785; upper
    /// share: triangle 1/4, others 1/2); 8 px minimum area.
    fn default() -> Self {
        Detector {
            min_area: 8,
            square_fill: 0.95,
            triangle_top_share: 0.375,
        }
    }
}

impl Detector {
    /// The objects in a row-major RGB image of `size` x `size` pixels.
    pub fn detect(&self, rgb: &[u8], size: usize) -> Vec<Detection> {
        let labels: Vec<Option<Colour>> = rgb.chunks_exact(3).map(classify).collect();
        let mut seen = vec![false; labels.len()];
        let mut out = Vec::new();
        let mut stack = Vec::new();
        for start in 0..labels.len() {
            let Some(colour) = labels[start] else {
                continue;
            };
            if seen[start] {
                continue;
            }
            // Flood fill one component.
            seen[start] = true;
            stack.push(start);
            let mut pixels = Vec::new();
            let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
            while let Some(i) = stack.pop() {
                let (x, y) = (i % size, i / size);
                pixels.push((x, y));
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
                let mut visit = |j: usize| {
                    if !seen[j] && labels[j] == Some(colour) {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if x > 0 {
                    visit(i - 1);
                }
                if x + 1 < size {
                    visit(i + 1);
                }
                if y > 0 {
                    visit(i - size);
                }
                if y + 1 < size {
                    visit(i + size);
                }
            }
            let area = pixels.len();
            if area < self.min_area {
                continue;
            }
            let fill = area as f32 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
            // An upward triangle keeps a quarter of its area in the upper half of its box;
            // circles and squares keep half.
            let mid = (y0 + y1 + 1) as f32 / 2.0;
            let upper = pixels.iter().filter(|p| (p.1 as f32 + 0.5) < mid).count() as f32
                + pixels.iter().filter(|p| (p.1 as f32 + 0.5) == mid).count() as f32 / 2.0;
            // A square fills the corners of its box; a disc leaves them empty.
            let corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
                .iter()
                .filter(|c| pixels.contains(c))
                .count();
            let top_share = upper / area as f32;
            let shape = if top_share < self.triangle_top_share {
                Shape::Triangle
            } else if corners >= 3 || fill >= self.square_fill {
                Shape::Square
            } else {
                Shape::Circle
            };
            out.push(Detection {
                colour,
                shape,
                center: [(x0 + x1 + 1) as f32 / 2.0, (y0 + y1 + 1) as f32 / 2.0],
                area,
                fill,
            });
        }
        out
    }
}

/// The nearest of the palette colours and the background; `None` for the background.
fn classify(px: &[u8]) -> Option<Colour> {
    let dist = |c: [u8; 3]| -> i32 {
        (0..3)
            .map(|k| (px[k] as i32 - c[k] as i32).pow(2))
            .sum::<i32>()
    };
    let mut best = (dist(BACKGROUND), None);
    for c in Colour::ALL {
        let d = dist(c.rgb());
        if d < best.0 {
            best = (d, Some(c));
        }
    }
    best.1
}

/// Whether the detections make the caption's claim true: every named coloured shape present
/// (single, pair), exactly `count` of them (count), or a pair in the stated relation (spatial).
pub fn satisfies(claim: &Claim, found: &[Detection]) -> bool {
    let matching =
        |(c, s): (Colour, Shape)| found.iter().filter(move |d| d.colour == c && d.shape == s);
    match *claim {
        Claim::Single { colour, shape } => matching((colour, shape)).next().is_some(),
        Claim::Pair { objects } => objects.iter().all(|&o| matching(o).next().is_some()),
        Claim::Count {
            count,
            colour,
            shape,
        } => matching((colour, shape)).count() == count,
        Claim::Spatial {
            first,
            relation,
            second,
        } => matching(first).any(|a| matching(second).any(|b| relation.holds(a.center, b.center))),
    }
}
