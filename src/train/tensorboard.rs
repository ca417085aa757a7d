//! TensorBoard event files (`--report-to tensorboard`): scalars each step and PNG images at
//! each validation, in the format TensorBoard's own `EventFileWriter` writes
//! (`tensorboard/summary/writer/event_file_writer.py` and `record_writer.py`), so that
//! `tensorboard --logdir <output>/logs` shows a run as it trains.
//!
//! An event file is a sequence of TFRecords, each a serialized `tensorboard.Event` protobuf
//! (`tensorboard/compat/proto/event.proto`, `summary.proto`):
//!
//! ```text
//! u64 le   length of the data
//! u32 le   masked CRC32C of those 8 length bytes
//! [u8]     the data: one Event
//! u32 le   masked CRC32C of the data
//! ```
//!
//! The first event names the format (`file_version: "brain.Event:2"`); each later one holds a
//! `Summary` of tagged values at a step: a `simple_value` (what `add_scalar` writes) or an
//! `Image` with its encoded PNG (what `add_image` writes). The messages are the few fields we
//! write, as structs with prost's derive; field numbers and types are those of TensorBoard's
//! `.proto` files (checked against the Python descriptors of tensorboard 2.21.0). A resumed run
//! starts a new file in the same folder (names hold the time, host, process and a counter, so
//! they never collide); TensorBoard merges every file of a folder into one run.
//!
//! Tests compare our bytes with a file TensorBoard's own writer classes wrote and check what
//! TensorBoard's reader read from ours (`scripts/tensorboard_fixture.py`,
//! `tests/fixtures/tensorboard/`).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use image::ImageDecoder;
use image::codecs::png::PngDecoder;
use prost::Message;

use crate::error::{Error, Result};

/// The format version TensorBoard expects in a file's first event.
const FILE_VERSION: &str = "brain.Event:2";

/// The writer named in a file's first event (`source_metadata.writer`); TensorBoard shows it in
/// its debug output and warns when the files of one run disagree.
const SOURCE_WRITER: &str = "ctcal";

/// Files this process has started, so that two writers in one second get different names.
static FILES_STARTED: AtomicU64 = AtomicU64::new(0);

/// Writes one TensorBoard event file (`events.out.tfevents.<secs>.<host>.<pid>.<n>`) in a log
/// folder: scalars and PNG images, each tagged (`loss/total`, `validation/0`) at a step.
///
/// Every call writes its whole event and flushes it to the file, so TensorBoard, which reads
/// the file while it grows, sees each step as it ends, and a run that is killed loses nothing
/// already written. Wall times are seconds since the Unix epoch ([`wall_time_now`]); they are
/// arguments so that tests are deterministic and a caller can stamp several events alike.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created if missing), named from the current time, the
    /// host, the process id and a per-process counter, as TensorBoard's writer names them.
    pub fn create(dir: &Path) -> Result<Self> {
        let wall_time = wall_time_now();
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{}",
            wall_time as u64,
            host_name(),
            std::process::id(),
            FILES_STARTED.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_at(dir, &name, wall_time)
    }

    /// Starts the event file `dir/file_name` with its first event stamped `wall_time`: the
    /// deterministic form of [`create`](Self::create). An existing file is never overwritten
    /// (an error), as that would lose a run's history. TensorBoard reads only files whose name
    /// contains `tfevents`.
    pub fn create_at(dir: &Path, file_name: &str, wall_time: f64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(file_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
            source_metadata: Some(SourceMetadata {
                writer: SOURCE_WRITER.into(),
            }),
        })?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one scalar (`add_scalar`): the value of `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32, wall_time: f64) -> Result<()> {
        self.scalars(step, &[(tag, value)], wall_time)
    }

    /// Writes several scalars of one step as one event (the losses, learning rate and step time
    /// of a training step); TensorBoard reads each tag as if written alone.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)], wall_time: f64) -> Result<()> {
        let value = values
            .iter()
            .map(|&(tag, v)| Value {
                tag: tag.into(),
                value: Some(ValueKind::SimpleValue(v)),
            })
            .collect();
        self.summary(step, Summary { value }, wall_time)
    }

    /// Writes one image (`add_image`) from its PNG file bytes; the size and colour space
    /// TensorBoard shows are read from the PNG's header. An error if `png` is not a PNG.
    pub fn image_png(&mut self, tag: &str, step: i64, png: &[u8], wall_time: f64) -> Result<()> {
        let decoder = PngDecoder::new(Cursor::new(png))
            .map_err(|e| Error::Input(format!("TensorBoard image {tag:?}: not a PNG: {e}")))?;
        let (width, height) = decoder.dimensions();
        let image = Image {
            height: dimension(tag, height)?,
            width: dimension(tag, width)?,
            // 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA: TensorFlow's colour spaces are the
            // channel counts.
            colorspace: i32::from(decoder.color_type().channel_count()),
            encoded_image_string: png.to_vec(),
        };
        let value = vec![Value {
            tag: tag.into(),
            value: Some(ValueKind::Image(image)),
        }];
        self.summary(step, Summary { value }, wall_time)
    }

    /// Writes a summary event.
    fn summary(&mut self, step: i64, summary: Summary, wall_time: f64) -> Result<()> {
        self.write(&Event {
            wall_time,
            step,
            what: Some(What::Summary(summary)),
            source_metadata: None,
        })
    }

    /// Writes `event` as one record and flushes it.
    fn write(&mut self, event: &Event) -> Result<()> {
        let record = record(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Seconds since the Unix epoch, the wall time of an event written now.
pub fn wall_time_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An image side as the protobuf's `int32`.
fn dimension(tag: &str, side: u32) -> Result<i32> {
    i32::try_from(side)
        .map_err(|_| Error::Input(format!("TensorBoard image {tag:?}: side {side} too large")))
}

/// `data` framed as a TFRecord: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC32C (`tensorflow/core/lib/hash/crc32c.h`): rotated and offset, since a
/// CRC of data that holds CRCs is weak.
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// This machine's name for event file names, as `socket.gethostname()` gives it, with
/// characters outside `[A-Za-z0-9._-]` replaced; `localhost` where none can be read.
fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// `tensorboard.Event` (event.proto), the fields we write.
#[derive(Clone, PartialEq, Message)]
struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    wall_time: f64,
    /// The training step (0 is not written: proto3 leaves defaults out).
    #[prost(int64, tag = "2")]
    step: i64,
    /// The `what` oneof: the file's version (first event) or a summary.
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
    /// Who wrote the file (first event).
    #[prost(message, optional, tag = "10")]
    source_metadata: Option<SourceMetadata>,
}

/// `Event.what` (event.proto), the cases we write.
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    /// `file_version`, [`FILE_VERSION`].
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// `summary`.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorboard.SourceMetadata` (event.proto).
#[derive(Clone, PartialEq, Message)]
struct SourceMetadata {
    /// The writing library, [`SOURCE_WRITER`].
    #[prost(string, tag = "1")]
    writer: String,
}

/// `tensorboard.Summary` (summary.proto).
#[derive(Clone, PartialEq, Message)]
struct Summary {
    /// The tagged values.
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorboard.Summary.Value` (summary.proto), the fields we write.
#[derive(Clone, PartialEq, Message)]
struct Value {
    /// The series the value belongs to.
    #[prost(string, tag = "1")]
    tag: String,
    /// The `value` oneof.
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    value: Option<ValueKind>,
}

/// `Summary.Value.value` (summary.proto), the cases we write.
#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    /// `simple_value`: a scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// `image`.
    #[prost(message, tag = "4")]
    Image(Image),
}

/// `tensorboard.Summary.Image` (summary.proto).
#[derive(Clone, PartialEq, Message)]
struct Image {
    /// Pixels high.
    #[prost(int32, tag = "1")]
    height: i32,
    /// Pixels wide.
    #[prost(int32, tag = "2")]
    width: i32,
    /// Channels: 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

#[cfg(test)]
mod tests;
