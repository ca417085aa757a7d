#!/usr/bin/env bash
# Packs the crate as crates.io would (without building it) and checks the package: under
# crates.io's 10 MB limit, the licence files in, the repository's weights, data, fixtures and
# benchmarks out. Run by .ci/run; `cargo package -p ctcal` (which also builds the package)
# passes as well but takes a full build.
set -euo pipefail
cd "$(dirname "$0")/.."
list=$(cargo package --list --allow-dirty -p ctcal 2>/dev/null)
for f in LICENSE-MIT LICENSE-APACHE README.md Cargo.toml src/lib.rs; do
  grep -qx "$f" <<<"$list" || { echo "package_check: $f is not in the package" >&2; exit 1; }
done
if grep -E '^(weights|tests|benches|scripts|shapes|local|out)/' <<<"$list" >&2; then
  echo "package_check: the files above should stay out of the package" >&2
  exit 1
fi
cargo package --no-verify --allow-dirty -p ctcal -q 2>/dev/null
crate=$(ls -t "${CARGO_TARGET_DIR:-target}"/package/ctcal-*.crate | head -1)
size=$(stat -c %s "$crate")
echo "package_check: $crate is $size bytes, $(wc -l <<<"$list") files"
if [ "$size" -ge 10000000 ]; then
  echo "package_check: over crates.io's 10 MB limit" >&2
  exit 1
fi
