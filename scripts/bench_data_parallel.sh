#!/usr/bin/env bash
# Data-parallel throughput: the README's first command (CTCal LoRA fine-tuning of the shapes
# UNet) on 1, 2, ... peers of the build's backend, each peer with the same batch, and prints
# per peer count the median step time, steps per second and samples per second (from each
# run's metrics.jsonl), then the speed-up over one peer.
#
#   bash scripts/bench_data_parallel.sh                 # ndarray CPU peers: 1 2 4
#   PEERS="1 2" BATCH=4 STEPS=12 bash scripts/bench_data_parallel.sh
#   FEATURES=cuda PEERS="1 2 4 8" bash scripts/bench_data_parallel.sh   # GPUs cuda:0..
#
# On a CPU every peer shares the same cores (burn-ndarray's kernels already use them), so
# extra peers mostly overlap one peer's single-threaded stretches with another's.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS:-1 2 4}"
BATCH="${BATCH:-2}"
STEPS="${STEPS:-12}"
FEATURES="${FEATURES:-}"
OUT="${OUT:-target/bench-data-parallel}"
mkdir -p "$OUT"
flags=()
[ -n "$FEATURES" ] && flags=(--features "$FEATURES")
cargo build --release --example train_sd21 "${flags[@]}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "workload: shapes UNet, CTCal LoRA, batch $BATCH per peer, $STEPS steps (median of steps 3..)"
printf '%-6s %-12s %-10s %-12s %-8s\n' peers step_s steps/s samples/s speedup
base=""
for n in $PEERS; do
  dir="$OUT/peers-$n"
  ./target/release/examples/train_sd21 --num-devices "$n" --batch-size "$BATCH" \
    --steps "$STEPS" --validate-every 0 --checkpoint-every 0 --out "$dir" --overwrite \
    >"$dir.log" 2>&1 || { echo "peers $n failed: see $dir.log"; exit 1; }
  line=$(python3 - "$dir/metrics.jsonl" "$n" "$BATCH" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
times = [r["step_time"] for r in rows[2:]] or [r["step_time"] for r in rows]
t = statistics.median(times)
n, b = int(sys.argv[2]), int(sys.argv[3])
print(f"{t:.4f} {1 / t:.3f} {n * b / t:.2f}")
EOF
)
  read -r t sps samples <<<"$line"
  base="${base:-$samples}"
  speed=$(python3 -c "print(f'{$samples / $base:.2f}x')")
  printf '%-6s %-12s %-10s %-12s %-8s\n' "$n" "$t" "$sps" "$samples" "$speed"
  echo "throughput peers=$n step_s=$t samples_per_s=$samples"
done
