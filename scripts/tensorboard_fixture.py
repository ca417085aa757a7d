"""TensorBoard event-file fixtures for src/train/tensorboard.rs, from TensorBoard itself.

One command, from the repository root (the venv is under local/, which git ignores):
    python3 -m venv local/tb-venv
    local/tb-venv/bin/pip install tensorboard==2.21.0 protobuf==7.36.2 pillow==13.0.0
    local/tb-venv/bin/python scripts/tensorboard_fixture.py
(`--read` only reads the committed Rust file again. The servers listen on 127.0.0.1 only.)

It writes tests/fixtures/tensorboard/ (a few kB):
  rgb_8x6.png, grey_5x3.png      the images of the run below (PIL; 8 wide, 6 high: not square)
  by_tensorboard/events.out.tfevents.1700000000.fixture
                                 the run written with TensorBoard's own classes: its
                                 `RecordWriter` (the framing `EventFileWriter` writes through)
                                 and its `event_pb2` / `summary_pb2` messages, the events built
                                 as `EventFileWriter` and `add_scalar` / `add_image` build them.
                                 (`EventFileWriter` itself stamps its first event with the
                                 clock and with its own name as the writer; we name ours.)
  by_ctcal/events.out.tfevents.1700000000.fixture
                                 the same run written by the Rust `EventWriter` (the script runs
                                 `cargo test -p ctcal --lib train::tensorboard -- --ignored`)
  read_by_tensorboard.json       what TensorBoard read from the Rust file, three ways: the
                                 classic `EventAccumulator`, and the TensorBoard server's HTTP
                                 routes with `--load_fast=true` (its Rust data server, the
                                 default) and with `--load_fast=false` (its Python loader). Wall
                                 times and values are Python's repr strings, exact and with NaN.

The Rust tests check that the Rust writer's file equals TensorBoard's byte for byte, equals the
committed by_ctcal file, and that what TensorBoard read from it is what the Rust test wrote.
`RUN` below and `RUN` in src/train/tensorboard/tests.rs list the same events.
"""

import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import tensorboard
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tensorboard"
FILE_NAME = "events.out.tfevents.1700000000.fixture"
T = 1_700_000_000

# (wall_time, step, what): what is a list of (tag, value) scalars, or ("image", tag, png file).
FILE_VERSION_TIME = T + 0.25
RUN = [
    (T + 0.5, 0, [("lr", 0.0)]),
    (T + 1.123456, 1, [("loss/total", 0.1), ("loss/diffusion", 1 / 3), ("loss/ctcal", -2.5e-3),
                       ("lr", 1e-4)]),
    (T + 1.2, 1, [("time/step_s", 0.7)]),
    (T + 2.5, 2, [("loss/total", math.nan), ("lr", 2e-4)]),
    (T + 3.0, 2, ("image", "validation/0", "rgb_8x6.png")),
    (T + 3.0, 2, ("image", "maps/teacher_student", "grey_5x3.png")),
    (T + 4.75, 3_000_000_000, [("loss/total", 0.05), ("lr", 1e-4)]),
]


def write_pngs():
    """The two images: an RGB gradient and a grey ramp, small and unlike each other."""
    rgb = Image.new("RGB", (8, 6))
    rgb.putdata([(x * 32, y * 40, 255 - x * 16 - y * 8) for y in range(6) for x in range(8)])
    rgb.save(FIX / "rgb_8x6.png")
    grey = Image.new("L", (5, 3))
    grey.putdata([(x * 50 + y * 20) % 256 for y in range(3) for x in range(5)])
    grey.save(FIX / "grey_5x3.png")


def events():
    """The run's events, as TensorBoard's writer and its `add_scalar`/`add_image` build them."""
    yield event_pb2.Event(
        wall_time=FILE_VERSION_TIME,
        file_version="brain.Event:2",
        source_metadata=event_pb2.SourceMetadata(writer="ctcal"),
    )
    for wall_time, step, what in RUN:
        if isinstance(what, tuple):
            _, tag, name = what
            png = (FIX / name).read_bytes()
            with Image.open(FIX / name) as img:
                width, height = img.size
                channels = len(img.getbands())
            value = summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=height, width=width, colorspace=channels, encoded_image_string=png))
            values = [value]
        else:
            values = [summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in what]
        yield event_pb2.Event(wall_time=wall_time, step=step,
                              summary=summary_pb2.Summary(value=values))


def write_tensorboard_file():
    out = FIX / "by_tensorboard"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(out / FILE_NAME, "wb") as f:
        writer = RecordWriter(f)
        for event in events():
            writer.write(event.SerializeToString())
        writer.flush()


def write_rust_file():
    shutil.rmtree(FIX / "by_ctcal", ignore_errors=True)
    subprocess.run(["cargo", "test", "-p", "ctcal", "--lib", "train::tensorboard", "--",
                    "--ignored"], cwd=ROOT, check=True)


def exact(x):
    """A float as Python's repr: exact when parsed back, and says nan and inf."""
    return repr(float(x))


def png_name(data):
    for name in ("rgb_8x6.png", "grey_5x3.png"):
        if (FIX / name).read_bytes() == bytes(data):
            return name
    return "unknown PNG of %d bytes" % len(data)


def read_with_accumulator(path):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    return {
        "file_version": acc.file_version,
        "source_writer": acc.GetSourceWriter(),
        "scalars": {tag: [{"step": e.step, "wall_time": exact(e.wall_time),
                           "value": exact(e.value)} for e in acc.Scalars(tag)]
                    for tag in sorted(tags["scalars"])},
        "images": {tag: [{"step": e.step, "wall_time": exact(e.wall_time), "width": e.width,
                          "height": e.height, "png": png_name(e.encoded_image_string)}
                         for e in acc.Images(tag)]
                   for tag in sorted(tags["images"])},
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, route, query=""):
    with urllib.request.urlopen(url + route + "?" + query, timeout=30) as r:
        return r.read()


def read_with_server(logdir, run, load_fast):
    """What the TensorBoard server, on this machine's loopback, serves for `run`."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
           "--host", "127.0.0.1", "--port", str(port), "--load_fast", load_fast,
           "--reload_interval", "1"]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d" % port
    try:
        deadline = time.time() + 60
        while True:
            try:
                scalar_tags = json.loads(get(url, "/data/plugin/scalars/tags"))
                image_tags = json.loads(get(url, "/data/plugin/images/tags"))
                if run in scalar_tags and run in image_tags:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                log.seek(0)
                raise RuntimeError("TensorBoard served nothing for %s:\n%s"
                                   % (run, log.read().decode(errors="replace")))
            time.sleep(0.5)
        scalars = {}
        for tag in sorted(scalar_tags[run]):
            rows = json.loads(get(url, "/data/plugin/scalars/scalars",
                                  urllib.parse.urlencode({"run": run, "tag": tag})))
            # The server writes NaN and infinities as the strings "NaN", "Infinity".
            scalars[tag] = [{"step": step, "wall_time": exact(wall), "value": exact(value)}
                            for wall, step, value in rows]
        images = {}
        for tag in sorted(image_tags[run]):
            rows = json.loads(get(url, "/data/plugin/images/images",
                                  urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})))
            images[tag] = [{"step": row["step"], "wall_time": exact(row["wall_time"]),
                            "png": png_name(get(url, "/data/plugin/images/individualImage",
                                                row["query"]))} for row in rows]
        return {"scalars": scalars, "images": images}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def read_rust_file():
    path = FIX / "by_ctcal" / FILE_NAME
    result = {
        "about": "What TensorBoard read from by_ctcal/%s (scripts/tensorboard_fixture.py)"
                 % FILE_NAME,
        "tensorboard": tensorboard.__version__,
        "event_accumulator": read_with_accumulator(path),
        "server_load_fast_true": read_with_server(FIX, "by_ctcal", "true"),
        "server_load_fast_false": read_with_server(FIX, "by_ctcal", "false"),
    }
    with open(FIX / "read_by_tensorboard.json", "w") as f:
        f.write(compact_json(result) + "\n")


def compact_json(obj, indent=""):
    """JSON with one line per event (`allow_nan=False`: NaN is a string here)."""
    if isinstance(obj, dict) and not all(isinstance(v, (str, int, float)) for v in obj.values()):
        inner = indent + " "
        items = ",\n".join(inner + json.dumps(k, ensure_ascii=False) + ": "
                           + compact_json(v, inner) for k, v in obj.items())
        return "{\n" + items + "\n" + indent + "}"
    if isinstance(obj, list):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + compact_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, allow_nan=False, ensure_ascii=False)


def main():
    # `--read` only reads the committed Rust file again (no cargo).
    FIX.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] != ["--read"]:
        write_pngs()
        write_tensorboard_file()
        write_rust_file()
    read_rust_file()
    total = sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file())
    print("wrote %s (%d bytes)" % (FIX.relative_to(ROOT), total))


if __name__ == "__main__":
    main()
