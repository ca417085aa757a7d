//! The event writer against TensorBoard itself: the fixtures of
//! `scripts/tensorboard_fixture.py` in `tests/fixtures/tensorboard/`.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::*;

/// The fixture folder.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorboard")
}

/// The fixture files' name (TensorBoard reads names holding `tfevents`).
const FILE_NAME: &str = "events.out.tfevents.1700000000.fixture";

const T: f64 = 1_700_000_000.0;

/// The wall time of the file's first event.
const FILE_VERSION_TIME: f64 = T + 0.25;

/// What one event of the fixture run holds.
enum What {
    /// Scalars: (tag, value).
    Scalars(&'static [(&'static str, f32)]),
    /// An image: tag and PNG fixture file.
    Image(&'static str, &'static str),
}

/// The fixture run, event by event after the first: (wall time, step, what). The same as
/// `RUN` in the script: step 0 (which proto3 leaves out), values not exact in f32, a NaN,
/// several values in one event, two images of different colour spaces at one step, a step
/// beyond `i32`.
const RUN: &[(f64, i64, What)] = &[
    (T + 0.5, 0, What::Scalars(&[("lr", 0.0)])),
    (
        T + 1.123456,
        1,
        What::Scalars(&[
            ("loss/total", 0.1),
            ("loss/diffusion", 1.0 / 3.0),
            ("loss/ctcal", -2.5e-3),
            ("lr", 1e-4),
        ]),
    ),
    (T + 1.2, 1, What::Scalars(&[("time/step_s", 0.7)])),
    (
        T + 2.5,
        2,
        What::Scalars(&[("loss/total", f32::NAN), ("lr", 2e-4)]),
    ),
    (T + 3.0, 2, What::Image("validation/0", "rgb_8x6.png")),
    (
        T + 3.0,
        2,
        What::Image("maps/teacher_student", "grey_5x3.png"),
    ),
    (
        T + 4.75,
        3_000_000_000,
        What::Scalars(&[("loss/total", 0.05), ("lr", 1e-4)]),
    ),
];

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes the fixture run with [`EventWriter`] into `dir`; returns the file.
fn write_run(dir: &Path) -> PathBuf {
    let mut writer = EventWriter::create_at(dir, FILE_NAME, FILE_VERSION_TIME).unwrap();
    for &(wall_time, step, ref what) in RUN {
        match *what {
            What::Scalars([(tag, value)]) => writer.scalar(tag, step, *value, wall_time),
            What::Scalars(values) => writer.scalars(step, values, wall_time),
            What::Image(tag, png) => {
                writer.image_png(tag, step, &read(&fixtures().join(png)), wall_time)
            }
        }
        .unwrap();
    }
    writer.path().to_path_buf()
}

/// A fresh scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctcal-tensorboard-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// The records of an event file, each checked against its two masked CRCs.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(8);
        let n = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let crc = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
        assert_eq!(crc(&tail[..4]), masked_crc32c(len), "length CRC");
        let data = &tail[4..4 + n];
        assert_eq!(crc(&tail[4 + n..8 + n]), masked_crc32c(data), "data CRC");
        out.push(data);
        rest = &tail[8 + n..];
    }
    out
}

/// TensorFlow's CRC32C check value and TFRecord's mask (`crc32c_test.cc`: the mask of the
/// empty string is the offset alone; the masked value TensorBoard's `masked_crc32c` gives).
#[test]
fn masked_crc32c_matches_tensorflow() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c(b"123456789")
    assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
}

/// The Rust writer's file equals, byte for byte, the one TensorBoard's own writer classes
/// wrote of the same events, and the committed Rust-written file TensorBoard read.
#[test]
fn the_file_is_byte_identical_to_tensorboards() {
    let dir = scratch("bytes");
    let ours = read(&write_run(&dir));
    let theirs = read(&fixtures().join("by_tensorboard").join(FILE_NAME));
    let (a, b) = (records(&ours), records(&theirs));
    assert_eq!(a.len(), b.len(), "event count");
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a, b, "event {i} differs from TensorBoard's");
    }
    assert_eq!(ours, theirs);
    let committed = read(&fixtures().join("by_ctcal").join(FILE_NAME));
    assert!(
        ours == committed,
        "the writer changed: rerun scripts/tensorboard_fixture.py"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// What TensorBoard read from the Rust-written file (its event accumulator, and its server
/// with the Rust and with the Python loader) is what the test wrote: every tag, step, wall
/// time and value (exactly, NaN as NaN), every image's bytes and size.
#[test]
fn tensorboard_reads_back_what_was_written() {
    let path = fixtures().join("read_by_tensorboard.json");
    let report: Json = serde_json::from_slice(&read(&path)).unwrap();
    let accumulator = &report["event_accumulator"];
    assert_eq!(accumulator["file_version"], 2.0);
    assert_eq!(accumulator["source_writer"], SOURCE_WRITER);
    for reader in [
        "event_accumulator",
        "server_load_fast_true",
        "server_load_fast_false",
    ] {
        let got = &report[reader];
        let (scalars, images) = expected();
        let tags = |kind: &str| -> Vec<String> {
            got[kind].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            tags("scalars"),
            scalars.keys().cloned().collect::<Vec<_>>(),
            "{reader}"
        );
        assert_eq!(
            tags("images"),
            images.keys().cloned().collect::<Vec<_>>(),
            "{reader}"
        );
        for (tag, want) in &scalars {
            let rows = got["scalars"][tag].as_array().unwrap();
            assert_eq!(rows.len(), want.len(), "{reader} {tag}");
            for (row, &(wall_time, step, value)) in rows.iter().zip(want) {
                assert_eq!(row["step"], step, "{reader} {tag}");
                assert_eq!(number(&row["wall_time"]), wall_time, "{reader} {tag}");
                let v = number(&row["value"]);
                assert!(
                    v.to_bits() == f64::from(value).to_bits() || (v.is_nan() && value.is_nan()),
                    "{reader} {tag} step {step}: read {v}, wrote {}",
                    f64::from(value)
                );
            }
        }
        for (tag, want) in &images {
            let rows = got["images"][tag].as_array().unwrap();
            assert_eq!(rows.len(), want.len(), "{reader} {tag}");
            for (row, &(wall_time, step, png)) in rows.iter().zip(want) {
                assert_eq!(row["step"], step, "{reader} {tag}");
                assert_eq!(number(&row["wall_time"]), wall_time, "{reader} {tag}");
                assert_eq!(row["png"], png, "{reader} {tag}");
                if reader == "event_accumulator" {
                    let (w, h) = image::image_dimensions(fixtures().join(png)).unwrap();
                    assert_eq!(
                        (row["width"].clone(), row["height"].clone()),
                        (w.into(), h.into())
                    );
                }
            }
        }
    }
}

/// Per tag, in order: (wall time, step, value) of the scalars or (wall time, step, PNG file)
/// of the images of [`RUN`].
type Rows<T> = BTreeMap<String, Vec<(f64, i64, T)>>;

/// The scalars and the images of [`RUN`], by tag.
fn expected() -> (Rows<f32>, Rows<&'static str>) {
    let (mut scalars, mut images) = (BTreeMap::new(), BTreeMap::new());
    for &(wall_time, step, ref what) in RUN {
        match *what {
            What::Scalars(values) => {
                for &(tag, value) in values {
                    let rows: &mut Vec<_> = scalars.entry(tag.to_string()).or_default();
                    rows.push((wall_time, step, value));
                }
            }
            What::Image(tag, png) => {
                let rows: &mut Vec<_> = images.entry(tag.to_string()).or_default();
                rows.push((wall_time, step, png));
            }
        }
    }
    (scalars, images)
}

/// A number the script wrote as Python's repr string (exact, and `nan` for NaN).
fn number(v: &Json) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Files started by [`EventWriter::create`] in one second get different names; an existing
/// file is not overwritten; what is not a PNG is refused, naming the tag.
#[test]
fn names_are_unique_and_nothing_is_overwritten() {
    let dir = scratch("names");
    let a = EventWriter::create(&dir).unwrap();
    let b = EventWriter::create(&dir).unwrap();
    assert_ne!(a.path(), b.path());
    let name = a.path().file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let pid = format!(".{}.", std::process::id());
    assert!(name.contains(&pid), "{name}");

    let bytes = read(a.path());
    let first = records(&bytes);
    assert_eq!(first.len(), 1);
    let event = Event::decode(first[0]).unwrap();
    assert_eq!(
        event.what,
        Some(super::What::FileVersion(FILE_VERSION.into()))
    );

    let err = EventWriter::create_at(&dir, name, 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "{err}");
    let mut a = a;
    let err = a
        .image_png("validation/0", 1, b"not a png", 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("validation/0") && err.contains("not a PNG"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Writes `tests/fixtures/tensorboard/by_ctcal/` for the script to read with TensorBoard
/// (`scripts/tensorboard_fixture.py` runs this).
#[test]
#[ignore = "writes the fixture: run by scripts/tensorboard_fixture.py"]
fn write_the_ctcal_fixture() {
    let dir = fixtures().join("by_ctcal");
    let _ = fs::remove_dir_all(&dir);
    write_run(&dir);
}
