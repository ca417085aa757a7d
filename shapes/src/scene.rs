//! What a shapes image shows: objects with a shape, a colour and a size at a position, the
//! caption that describes them and what that caption claims (binding, count, relation).

use serde::{Deserialize, Serialize};
use std::fmt;

/// An object's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward-pointing isosceles triangle.
    Triangle,
}

impl Shape {
    /// Every shape, in a fixed order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The caption word (singular).
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The caption word for `n` objects ("circle", "circles").
    pub fn noun(self, n: usize) -> String {
        if n == 1 {
            self.word().to_string()
        } else {
            format!("{}s", self.word())
        }
    }
}

/// An object's fill colour, from a palette far enough apart for a nearest-colour detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// (220, 40, 40).
    Red,
    /// (40, 170, 60).
    Green,
    /// (40, 80, 220).
    Blue,
    /// (235, 210, 40).
    Yellow,
}

impl Colour {
    /// Every colour, in a fixed order.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The fill colour in sRGB.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [235, 210, 40],
        }
    }
}

/// The background every image is drawn on (light grey: no palette colour is near it).
pub const BACKGROUND: [u8; 3] = [235, 235, 235];

/// Where the first object of a relation caption is relative to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Its centre has a smaller x.
    LeftOf,
    /// Its centre has a larger x.
    RightOf,
    /// Its centre has a smaller y (image rows grow downwards).
    Above,
    /// Its centre has a larger y.
    Below,
}

impl Relation {
    /// Every relation, in a fixed order.
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The caption phrase between the two objects.
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// Whether centre `a` stands in this relation to centre `b` (`[x, y]`, pixels).
    pub fn holds(self, a: [f32; 2], b: [f32; 2]) -> bool {
        match self {
            Relation::LeftOf => a[0] < b[0],
            Relation::RightOf => a[0] > b[0],
            Relation::Above => a[1] < b[1],
            Relation::Below => a[1] > b[1],
        }
    }
}

/// One drawn object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Outline.
    pub shape: Shape,
    /// Fill colour.
    pub colour: Colour,
    /// Centre `[x, y]` in pixels (continuous: pixel `i` covers `[i, i + 1)`).
    pub center: [f32; 2],
    /// Half the side of the object's bounding square, in pixels.
    pub radius: f32,
}

/// What a caption asserts, which the detector checks on a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Claim {
    /// "a red circle": one object of that colour and shape.
    Single {
        /// The colour.
        colour: Colour,
        /// The shape.
        shape: Shape,
    },
    /// "a red circle and a blue square": both coloured shapes present (attribute binding).
    Pair {
        /// The two objects' colours and shapes (different shapes).
        objects: [(Colour, Shape); 2],
    },
    /// "two yellow triangles": exactly `count` objects of that colour and shape.
    Count {
        /// How many.
        count: usize,
        /// The colour.
        colour: Colour,
        /// The shape.
        shape: Shape,
    },
    /// "a red circle to the left of a blue square".
    Spatial {
        /// The first object's colour and shape.
        first: (Colour, Shape),
        /// How the first sits relative to the second.
        relation: Relation,
        /// The second object's colour and shape.
        second: (Colour, Shape),
    },
}

impl Claim {
    /// The benchmark category the claim belongs to (`colour_binding`, `counting`, `spatial`;
    /// single objects count as `shape`).
    pub fn category(&self) -> &'static str {
        match self {
            Claim::Single { .. } => "shape",
            Claim::Pair { .. } => "colour_binding",
            Claim::Count { .. } => "counting",
            Claim::Spatial { .. } => "spatial",
        }
    }

    /// The (colour, shape) combinations the caption names.
    pub fn combinations(&self) -> Vec<(Colour, Shape)> {
        match *self {
            Claim::Single { colour, shape } | Claim::Count { colour, shape, .. } => {
                vec![(colour, shape)]
            }
            Claim::Pair { objects } => objects.to_vec(),
            Claim::Spatial { first, second, .. } => vec![first, second],
        }
    }

    /// The caption.
    pub fn caption(&self) -> String {
        let one = |(c, s): (Colour, Shape)| format!("a {} {}", c.word(), s.word());
        match *self {
            Claim::Single { colour, shape } => one((colour, shape)),
            Claim::Pair { objects } => format!("{} and {}", one(objects[0]), one(objects[1])),
            Claim::Count {
                count,
                colour,
                shape,
            } => format!(
                "{} {} {}",
                number_word(count),
                colour.word(),
                shape.noun(count)
            ),
            Claim::Spatial {
                first,
                relation,
                second,
            } => format!("{} {} {}", one(first), relation.phrase(), one(second)),
        }
    }

    /// The caption's nouns (the shape words), one per distinct shape, in caption order. The
    /// generator never names one shape twice in a caption, so each noun picks out its objects.
    pub fn nouns(&self) -> Vec<String> {
        match *self {
            Claim::Single { shape, .. } => vec![shape.noun(1)],
            Claim::Count { count, shape, .. } => vec![shape.noun(count)],
            Claim::Pair { objects } => objects.iter().map(|&(_, s)| s.noun(1)).collect(),
            Claim::Spatial { first, second, .. } => vec![first.1.noun(1), second.1.noun(1)],
        }
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.caption())
    }
}

fn number_word(n: usize) -> String {
    match n {
        1 => "one".into(),
        2 => "two".into(),
        3 => "three".into(),
        n => n.to_string(),
    }
}

/// One image's content: the claim its caption makes and the objects that make it true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// What the caption asserts.
    pub claim: Claim,
    /// The objects, in the order the caption names them (count captions: left to right).
    pub objects: Vec<Object>,
}

impl Scene {
    /// The caption.
    pub fn caption(&self) -> String {
        self.claim.caption()
    }

    /// For each caption noun, the indices of the objects it names (a noun names every object
    /// of its shape).
    pub fn noun_objects(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for (noun, shape) in self.claim.nouns().into_iter().zip(self.noun_shapes()) {
            let idx = (0..self.objects.len())
                .filter(|&i| self.objects[i].shape == shape)
                .collect();
            out.push((noun, idx));
        }
        out
    }

    fn noun_shapes(&self) -> Vec<Shape> {
        match self.claim {
            Claim::Single { shape, .. } | Claim::Count { shape, .. } => vec![shape],
            Claim::Pair { objects } => objects.iter().map(|o| o.1).collect(),
            Claim::Spatial { first, second, .. } => vec![first.1, second.1],
        }
    }
}
