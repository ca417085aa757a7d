//! The training examples' log: `tracing` events (levels, `RUST_LOG` filters such as
//! `RUST_LOG=ctcal=debug` for a line per step) written to stderr above the progress bar.

use std::io::Write;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The one progress bar of a run; log lines are printed above it.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// The run's progress bar (hidden when stderr is not a terminal).
pub fn progress_bar() -> ProgressBar {
    BAR.get_or_init(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {per_sec} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    })
    .clone()
}

/// Sends `tracing` events at `info` and above (or as `RUST_LOG` says) to stderr, above the
/// progress bar. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // An error here means a subscriber is already set: keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(AboveBar)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

/// Makes a writer per log line that prints it with the progress bar suspended.
struct AboveBar;

impl<'a> MakeWriter<'a> for AboveBar {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One log line, printed when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let print = || {
            let _ = std::io::stderr().write_all(&line);
        };
        match BAR.get() {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}
