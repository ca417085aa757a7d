//! The seeded scene generator: captions from four templates (single object, two objects with
//! their colours, a count, a spatial relation), objects placed apart, and held-out
//! colour-shape combinations that only the held-out split uses.

use burn::config::Config;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::scene::{Claim, Colour, Object, Relation, Scene, Shape};
use ctcal::error::Error;

/// The benchmark's data: image size, object sizes and the combinations kept out of training.
#[derive(Config, Debug)]
pub struct ShapesConfig {
    /// Image side in pixels.
    #[config(default = 32)]
    pub size: usize,
    /// Smallest object radius (half the bounding square's side), pixels.
    #[config(default = 4.0)]
    pub min_radius: f32,
    /// Largest object radius, pixels.
    #[config(default = 7.0)]
    pub max_radius: f32,
    /// Colour-shape combinations that never appear in the training split; every held-out
    /// caption names at least one.
    #[config(
        default = "vec![(Colour::Red, Shape::Triangle), (Colour::Blue, Shape::Circle), (Colour::Yellow, Shape::Square)]"
    )]
    pub held_out: Vec<(Colour, Shape)>,
}

/// Which captions a split may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// No held-out combination anywhere in the caption.
    Train,
    /// At least one held-out combination in the caption (composition never seen in training).
    HeldOut,
}

impl Split {
    fn salt(self) -> u64 {
        match self {
            Split::Train => 0x5eed_0001,
            Split::HeldOut => 0x5eed_0002,
        }
    }
}

impl ShapesConfig {
    /// Checks the sizes: objects must fit, two apart, in the image.
    pub fn validate(&self) -> ctcal::Result<()> {
        if !(self.min_radius >= 2.0 && self.min_radius <= self.max_radius) {
            return Err(Error::Config(format!(
                "shapes: radii must satisfy 2 <= min_radius <= max_radius, got {} and {}",
                self.min_radius, self.max_radius
            )));
        }
        if (self.size as f32) < 4.0 * self.max_radius + 4.0 {
            return Err(Error::Config(format!(
                "shapes: a {0}x{0} image cannot hold two objects of radius {1}",
                self.size, self.max_radius
            )));
        }
        if self.held_out.len() >= Colour::ALL.len() * Shape::ALL.len() {
            return Err(Error::Config(
                "shapes: every colour-shape combination is held out".into(),
            ));
        }
        Ok(())
    }

    /// `n` scenes of `split`, the same for the same `seed` (and config).
    pub fn generate(&self, split: Split, n: usize, seed: u64) -> ctcal::Result<Vec<Scene>> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed ^ split.salt());
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let claim = self.claim(&mut rng);
            let held = claim
                .combinations()
                .iter()
                .any(|c| self.held_out.contains(c));
            if held != (split == Split::HeldOut) {
                continue;
            }
            if let Some(objects) = self.place(&claim, &mut rng) {
                out.push(Scene { claim, objects });
            }
        }
        Ok(out)
    }

    fn claim(&self, rng: &mut StdRng) -> Claim {
        let colour = |rng: &mut StdRng| *Colour::ALL.choose(rng).expect("colours");
        let two_shapes = |rng: &mut StdRng| {
            let a = *Shape::ALL.choose(rng).expect("shapes");
            let others: Vec<Shape> = Shape::ALL.into_iter().filter(|&s| s != a).collect();
            (a, *others.choose(rng).expect("shapes"))
        };
        match rng.random_range(0..4) {
            0 => Claim::Single {
                colour: colour(rng),
                shape: *Shape::ALL.choose(rng).expect("shapes"),
            },
            1 => {
                let (a, b) = two_shapes(rng);
                Claim::Pair {
                    objects: [(colour(rng), a), (colour(rng), b)],
                }
            }
            2 => Claim::Count {
                count: rng.random_range(2..=3),
                colour: colour(rng),
                shape: *Shape::ALL.choose(rng).expect("shapes"),
            },
            _ => {
                let (a, b) = two_shapes(rng);
                Claim::Spatial {
                    first: (colour(rng), a),
                    relation: *Relation::ALL.choose(rng).expect("relations"),
                    second: (colour(rng), b),
                }
            }
        }
    }

    /// Objects that make `claim` true, placed apart (bounding squares at least 2 px apart);
    /// `None` after too many rejected placements.
    fn place(&self, claim: &Claim, rng: &mut StdRng) -> Option<Vec<Object>> {
        let specs: Vec<(Colour, Shape)> = match *claim {
            Claim::Count {
                count,
                colour,
                shape,
            } => vec![(colour, shape); count],
            _ => claim.combinations(),
        };
        // Three objects get smaller radii so that they fit.
        let max_r = if specs.len() > 2 {
            (self.min_radius + self.max_radius) / 2.0
        } else {
            self.max_radius
        };
        for _ in 0..1000 {
            let mut objects: Vec<Object> = Vec::with_capacity(specs.len());
            for &(colour, shape) in &specs {
                let radius = rng.random_range(self.min_radius..=max_r).round();
                let lo = radius + 1.0;
                let hi = self.size as f32 - radius - 1.0;
                let center = [rng.random_range(lo..=hi), rng.random_range(lo..=hi)];
                objects.push(Object {
                    shape,
                    colour,
                    center,
                    radius,
                });
            }
            if !apart(&objects) {
                continue;
            }
            match *claim {
                Claim::Spatial { relation, .. } => {
                    // The relation must hold with a margin a detector can see.
                    let (a, b) = (objects[0].center, objects[1].center);
                    let axis = matches!(relation, Relation::Above | Relation::Below) as usize;
                    if relation.holds(a, b) && (a[axis] - b[axis]).abs() >= 4.0 {
                        return Some(objects);
                    }
                }
                Claim::Count { .. } => {
                    objects.sort_by(|a, b| a.center[0].total_cmp(&b.center[0]));
                    return Some(objects);
                }
                _ => return Some(objects),
            }
        }
        None
    }
}

/// Whether every pair of bounding squares is at least 2 px apart on some axis.
fn apart(objects: &[Object]) -> bool {
    objects.iter().enumerate().all(|(i, a)| {
        objects[i + 1..].iter().all(|b| {
            let gap = a.radius + b.radius + 2.0;
            (a.center[0] - b.center[0]).abs() >= gap || (a.center[1] - b.center[1]).abs() >= gap
        })
    })
}
