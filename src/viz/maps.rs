//! Attention maps as pictures: heatmap tiles in the colour ramp, a colour bar, and the
//! teacher | student grid of a run's noun maps with its captions, nouns and levels.

use image::{Rgb, RgbImage};

use super::colour;
use super::text::{TextStyle, draw_text, text_width};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const GREY: Rgb<u8> = Rgb([100, 100, 100]);

/// One map (`grid[0] * grid[1]` values, row-major) divided by its maximum and scaled up
/// `scale` times without smoothing, so each cell is a `scale` x `scale` square of the
/// ramp colour of its value.
pub fn heatmap_tile(map: &[f32], grid: [usize; 2], scale: u32) -> RgbImage {
    let [h, w] = grid;
    let max = map.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
    let s = scale.max(1);
    RgbImage::from_fn(w as u32 * s, h as u32 * s, |x, y| {
        let v = map
            .get((y / s) as usize * w + (x / s) as usize)
            .copied()
            .unwrap_or(0.0);
        colour(v / max)
    })
}

/// Lays `maps` (each `grid[0] * grid[1]` values, row-major) side by side, each normalised to
/// its own maximum and scaled up to at least `tile` pixels high, with a 2-pixel gap.
pub fn heatmap_row(maps: &[Vec<f32>], grid: [usize; 2], tile: usize) -> RgbImage {
    let scale = tile.div_ceil(grid[0].max(1)).max(1) as u32;
    let (tw, th) = (grid[1] as u32 * scale, grid[0] as u32 * scale);
    let gap = 2;
    let width = (maps.len() as u32 * (tw + gap)).saturating_sub(gap);
    let mut img = RgbImage::from_pixel(width.max(1), th.max(1), WHITE);
    for (m, map) in maps.iter().enumerate() {
        let tile = heatmap_tile(map, grid, scale);
        image::imageops::replace(&mut img, &tile, (m as u32 * (tw + gap)) as i64, 0);
    }
    img
}

/// The colour ramp left (0) to right (1) as a `width` x `height` bar, for a legend.
pub fn colour_bar(width: u32, height: u32) -> RgbImage {
    let last = width.saturating_sub(1).max(1) as f32;
    RgbImage::from_fn(width, height, |x, _| colour(x as f32 / last))
}

/// One noun's maps: the teacher's and the student's, from the same noise.
#[derive(Debug, Clone)]
pub struct MapPair {
    /// The noun, written under the pair.
    pub noun: String,
    /// The teacher's map, `grid` values row-major.
    pub teacher: Vec<f32>,
    /// The student's map, `grid` values row-major.
    pub student: Vec<f32>,
}

/// One caption and the map pairs of its nouns.
#[derive(Debug, Clone)]
pub struct MapRow {
    /// The caption, written above the row.
    pub caption: String,
    /// One pair per noun, left to right.
    pub pairs: Vec<MapPair>,
}

/// The labels and sizes a map grid shares across its rows.
#[derive(Debug, Clone)]
pub struct MapGridSpec {
    /// Map size `[height, width]`.
    pub grid: [usize; 2],
    /// Label under each teacher tile (e.g. `teacher (t = 0)`).
    pub teacher: String,
    /// Label under each student tile (e.g. `student (t = 700)`).
    pub student: String,
    /// Smallest tile height in pixels (tiles are whole multiples of the map size, and wide
    /// enough for their labels).
    pub min_tile: u32,
}

const MARGIN: u32 = 16;
const TITLE: f32 = 17.0;
const NOTE: f32 = 13.0;
const CAPTION: f32 = 15.0;
const LABEL: f32 = 12.0;
const NOUN: f32 = 14.0;
/// Between the two tiles of a pair, and between pairs.
const TILE_GAP: u32 = 4;
const PAIR_GAP: u32 = 28;
const BAR: (u32, u32) = (180, 12);

/// Where everything of a map grid goes.
struct Layout {
    scale: u32,
    tile: (u32, u32),
    header: u32,
    row: u32,
    width: u32,
    height: u32,
}

impl Layout {
    fn new(rows: &[MapRow], spec: &MapGridSpec, header_width: u32) -> Self {
        let [h, w] = [spec.grid[0].max(1) as u32, spec.grid[1].max(1) as u32];
        let label = TextStyle::new(LABEL);
        let widest = text_width(&spec.teacher, label).max(text_width(&spec.student, label)) + 6;
        let scale = spec.min_tile.div_ceil(h).max(widest.div_ceil(w)).max(1);
        let tile = (w * scale, h * scale);
        let pair = 2 * tile.0 + TILE_GAP;
        let row_width = |r: &MapRow| {
            let n = r.pairs.len() as u32;
            let tiles = (n * (pair + PAIR_GAP)).saturating_sub(PAIR_GAP);
            let nouns = r
                .pairs
                .iter()
                .map(|p| text_width(&p.noun, TextStyle::new(NOUN).bold()));
            let widest_noun = nouns.max().unwrap_or(0);
            tiles
                .max(text_width(&r.caption, TextStyle::new(CAPTION)))
                .max(widest_noun)
        };
        let content = rows
            .iter()
            .map(row_width)
            .max()
            .unwrap_or(0)
            .max(header_width);
        let header = MARGIN + 2 * 22 + 8;
        // Caption, tiles, tile labels, noun, gap.
        let row = 22 + tile.1 + 4 + 16 + 20 + 14;
        Self {
            scale,
            tile,
            header,
            row,
            width: content + 2 * MARGIN,
            height: header + rows.len().max(1) as u32 * row + MARGIN,
        }
    }

    /// Top-left corner of the `side` (0 teacher, 1 student) tile of pair `pair` in row `row`.
    fn tile_origin(&self, row: usize, pair: usize, side: usize) -> (u32, u32) {
        let pair_width = 2 * self.tile.0 + TILE_GAP;
        let x =
            MARGIN + pair as u32 * (pair_width + PAIR_GAP) + side as u32 * (self.tile.0 + TILE_GAP);
        (x, self.header + row as u32 * self.row + 22)
    }
}

/// The teacher | student picture of noun maps: a header naming the levels and how maps are
/// scaled (each divided by its own maximum, so the colour bar runs from 0 to "max"), then per
/// row its caption, each noun's teacher and student tile side by side with their labels under
/// them, and the noun under the pair. Rows without pairs say so.
pub fn map_grid(rows: &[MapRow], spec: &MapGridSpec) -> RgbImage {
    let title = format!("Noun maps: {} | {}, same noise", spec.teacher, spec.student);
    let note = "each map divided by its own maximum:";
    let (title_style, note_style) = (
        TextStyle::new(TITLE).bold(),
        TextStyle::new(NOTE).colour(GREY),
    );
    let bar_label = TextStyle::new(LABEL).colour(GREY);
    let note_width = text_width(note, note_style)
        + 8
        + text_width("0", bar_label)
        + 6
        + BAR.0
        + 6
        + text_width("max", bar_label);
    let layout = Layout::new(rows, spec, text_width(&title, title_style).max(note_width));
    let mut img = RgbImage::from_pixel(layout.width, layout.height, WHITE);

    // 1. Header: the levels, then the scaling and the colour bar.
    draw_text(&mut img, MARGIN as i32, MARGIN as i32, &title, title_style);
    let y = (MARGIN + 24) as i32;
    draw_text(&mut img, MARGIN as i32, y, note, note_style);
    let mut x = MARGIN as i32 + text_width(note, note_style) as i32 + 8;
    draw_text(&mut img, x, y, "0", bar_label);
    x += text_width("0", bar_label) as i32 + 6;
    let bar_y = y + (NOTE as i32 - BAR.1 as i32) / 2 + 1;
    image::imageops::replace(&mut img, &colour_bar(BAR.0, BAR.1), x as i64, bar_y as i64);
    draw_text(&mut img, x + BAR.0 as i32 + 6, y, "max", bar_label);

    // 2. Rows.
    let (tw, th) = layout.tile;
    for (r, row) in rows.iter().enumerate() {
        let top = layout.header + r as u32 * layout.row;
        draw_text(
            &mut img,
            MARGIN as i32,
            top as i32,
            &row.caption,
            TextStyle::new(CAPTION).colour(INK),
        );
        if row.pairs.is_empty() {
            let y = (top + 22 + th / 2) as i32;
            draw_text(
                &mut img,
                MARGIN as i32,
                y,
                "(no nouns)",
                TextStyle::new(NOTE).colour(GREY),
            );
        }
        for (p, pair) in row.pairs.iter().enumerate() {
            for (side, (map, label)) in [
                (&pair.teacher, &spec.teacher),
                (&pair.student, &spec.student),
            ]
            .into_iter()
            .enumerate()
            {
                let (x, y) = layout.tile_origin(r, p, side);
                image::imageops::replace(
                    &mut img,
                    &heatmap_tile(map, spec.grid, layout.scale),
                    x as i64,
                    y as i64,
                );
                let style = TextStyle::new(LABEL).colour(GREY);
                let lx = x + tw.saturating_sub(text_width(label, style)) / 2;
                draw_text(&mut img, lx as i32, (y + th + 4) as i32, label, style);
            }
            let (x, y) = layout.tile_origin(r, p, 0);
            let style = TextStyle::new(NOUN).bold().colour(INK);
            let nx =
                (x + (2 * tw + TILE_GAP) / 2) as i32 - text_width(&pair.noun, style) as i32 / 2;
            draw_text(
                &mut img,
                nx.max(0),
                (y + th + 4 + 16) as i32,
                &pair.noun,
                style,
            );
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cell of a tile is a `scale`-pixel square in the ramp colour of value / max.
    #[test]
    fn tile_cells_have_the_ramp_colour_of_their_value() {
        // 2 x 3 map, max 0.8.
        let map = [0.0, 0.2, 0.4, 0.8, 0.6, 0.1];
        let tile = heatmap_tile(&map, [2, 3], 5);
        assert_eq!(tile.dimensions(), (15, 10));
        for (i, &v) in map.iter().enumerate() {
            let (r, c) = ((i / 3) as u32, (i % 3) as u32);
            for (dx, dy) in [(0, 0), (4, 4), (2, 3)] {
                assert_eq!(
                    *tile.get_pixel(c * 5 + dx, r * 5 + dy),
                    colour(v / 0.8),
                    "cell {i}"
                );
            }
        }
        assert_eq!(*tile.get_pixel(0, 5), colour(1.0));
    }

    #[test]
    fn row_places_tiles_with_gaps() {
        // Two 2x3 maps at tile 4: scale 2, each 6x4, gap 2 -> 14 wide, 4 high.
        let img = heatmap_row(
            &[vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0], vec![1.0; 6]],
            [2, 3],
            4,
        );
        assert_eq!(img.dimensions(), (14, 4));
        assert_eq!(*img.get_pixel(4, 0), colour(1.0));
        assert_eq!(*img.get_pixel(0, 0), colour(0.0));
        assert_eq!(*img.get_pixel(6, 0), WHITE);
        assert_eq!(*img.get_pixel(8, 3), colour(1.0));
    }

    #[test]
    fn colour_bar_ends_are_the_ramp_ends() {
        let bar = colour_bar(180, 12);
        assert_eq!(bar.dimensions(), (180, 12));
        for y in [0, 11] {
            assert_eq!(*bar.get_pixel(0, y), colour(0.0));
            assert_eq!(*bar.get_pixel(179, y), colour(1.0));
        }
        assert_eq!(*bar.get_pixel(90, 5), colour(90.0 / 179.0));
    }

    fn spec() -> MapGridSpec {
        MapGridSpec {
            grid: [4, 4],
            teacher: "teacher (t = 0)".into(),
            student: "student (t = 700)".into(),
            min_tile: 96,
        }
    }

    fn pair(noun: &str, hot: usize) -> MapPair {
        let mut teacher = vec![0.1; 16];
        teacher[hot] = 0.5;
        MapPair {
            noun: noun.into(),
            teacher,
            student: vec![0.25; 16],
        }
    }

    /// Tiles at least `min_tile` high and a whole multiple of the map; each tile where the
    /// layout says, with the ramp colour of its cells; the picture holds every row.
    #[test]
    fn grid_puts_each_tile_where_the_layout_says() {
        let rows = vec![
            MapRow {
                caption: "a red square and a green triangle".into(),
                pairs: vec![pair("square", 0), pair("triangle", 5)],
            },
            MapRow {
                caption: "a blue circle".into(),
                pairs: vec![pair("circle", 15)],
            },
        ];
        let spec = spec();
        let img = map_grid(&rows, &spec);
        let layout = Layout::new(&rows, &spec, 0);
        assert_eq!(layout.scale, 24);
        assert_eq!(layout.tile, (96, 96));
        assert!(img.height() >= layout.tile_origin(1, 0, 0).1 + 96);
        assert!(img.width() >= layout.tile_origin(0, 1, 1).0 + 96);
        let cell = |row, pair, side, k: usize| {
            let (x, y) = layout.tile_origin(row, pair, side);
            *img.get_pixel(x + (k % 4) as u32 * 24 + 12, y + (k / 4) as u32 * 24 + 12)
        };
        assert_eq!(cell(0, 0, 0, 0), colour(1.0));
        assert_eq!(cell(0, 0, 0, 1), colour(0.2));
        assert_eq!(cell(0, 1, 0, 5), colour(1.0));
        assert_eq!(cell(0, 1, 1, 5), colour(1.0));
        assert_eq!(cell(1, 0, 0, 15), colour(1.0));
        assert_eq!(cell(1, 0, 0, 14), colour(0.2));
        // Between the two tiles of a pair: white.
        let (x, y) = layout.tile_origin(0, 0, 1);
        assert_eq!(*img.get_pixel(x - 2, y + 10), WHITE);
    }

    /// A long label widens the tiles rather than running into the next one.
    #[test]
    fn tiles_are_as_wide_as_their_labels() {
        let mut spec = spec();
        spec.min_tile = 8;
        spec.student = "student (sigma = 0.7, same noise, long label)".into();
        let layout = Layout::new(&[], &spec, 0);
        assert!(layout.tile.0 >= text_width(&spec.student, TextStyle::new(LABEL)));
        assert_eq!(layout.tile.0 % 4, 0);
    }
}
