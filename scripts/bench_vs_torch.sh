#!/usr/bin/env bash
# The crate's CPU training-step speed and peak memory against PyTorch + diffusers doing the same
# work on the same machine, in the same run. One command, from anywhere:
#     bash scripts/bench_vs_torch.sh [--backend ndarray|tch|wgpu] [--rounds 5] [--iters N]
#                                    [--models "shapes-unet tiny-sd21"]
#                                    [--workloads "forward plain ctcal"] [--out DIR]
#                                    [--retries 2] [--idle-wait 120] [--wait-budget 900]
#                                    [--summarize]   (only the summary of --out's runs.tsv)
#
# For every (model, workload) — weights/shapes-unet at batch 16, weights/tiny-sd21 at batch 2;
# forward (no grad, batch 2), plain (LoRA step, diffusion loss), ctcal (LoRA step with the
# CTCal loss and the map auto-encoder) — it
#  1. writes the step's exact inputs with the crate (benches/vs_torch.rs --write-inputs);
#  2. runs the crate (benches/vs_torch.rs --read-inputs) and PyTorch (scripts/bench_torch.py,
#     diffusers' UNet2DConditionModel, peft LoRA, torch.optim.AdamW, f32, 2 threads) on them,
#     alternating, ROUNDS times each (ABBA order: crate first in odd rounds, PyTorch first in
#     even ones); each run is its own process under `/usr/bin/time` (peak RSS) and reports the
#     median of its timed iterations after one warm-up iteration;
#  3. checks after the first round that both sides' first-iteration losses (total, diffusion,
#     ctcal) agree within 1e-4 relative, and stops loudly if not (the loss after one optimiser
#     step, `loss2`, is compared and reported too);
#  4. prints a table and machine-readable lines:
#       ratio <model>/<workload> <median crate time / median torch time>
#       mem <model>/<workload> <median crate peak RSS / median torch peak RSS>
#       ratio <model>/ctcal-over-plain crate <x> torch <y>
#
# Timed iterations per run (after the warm-up): shapes-unet forward 5, plain 3, ctcal 3;
# tiny-sd21 forward 5, plain 3, ctcal 3 (--iters N overrides all). With 5 rounds the default
# run takes about 15 minutes on 2 cores (the crate's bench binary already built; PyTorch's
# import costs ~5 s per process). The machine must be otherwise idle: PyTorch's OpenMP threads
# slow down up to tenfold when another process takes a core (the crate's barely). A run during
# which other processes used more than 0.2 cores is redone, up to --retries times, after waiting
# (at most --idle-wait seconds each time, --wait-budget seconds in all) for the machine to go
# idle; the summary reports the other processes' CPU use and warns when it stayed above 0.2.
# Logs, inputs and runs.tsv go to --out (default out/bench_vs_torch).
#
# --backend tch builds the crate with its LibTorch backend: it first makes (or reuses) the
# environment TCH_VENV (default local/tch-venv) holding PyPI's torch==2.9.0 as libtorch.
#
# Python: the virtual environment .venv at the repository root (ignored by git), reused when it
# already has torch, diffusers and peft; otherwise created with the pins of
# scripts/requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1, peft 0.21.2 and its
# dependencies transformers / accelerate / huggingface_hub, safetensors, numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BACKEND=ndarray
ROUNDS=5
ITERS=
MODELS="shapes-unet tiny-sd21"
WORKLOADS="forward plain ctcal"
OUT=out/bench_vs_torch
RETRIES=2
IDLE_WAIT=120
WAIT_BUDGET=900
SUMMARIZE=
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --retries) RETRIES=$2; shift 2 ;;
    --idle-wait) IDLE_WAIT=$2; shift 2 ;;
    --wait-budget) WAIT_BUDGET=$2; shift 2 ;;
    --summarize) SUMMARIZE=1; shift ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "bench_vs_torch: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "bench_vs_torch: --rounds must be a positive integer" >&2; exit 2 ;; esac

iters_for() { # model workload
  if [ -n "$ITERS" ]; then echo "$ITERS"; return; fi
  case "$1/$2" in
    */forward) echo 5 ;;
    *) echo 3 ;;
  esac
}

START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/runs.tsv"

# --- Python environment -------------------------------------------------------------------------
PY=.venv/bin/python
have_torch() {
  [ -x "$PY" ] && "$PY" - <<'EOF' 2>/dev/null
import importlib
for name in ("torch", "diffusers", "peft", "safetensors", "numpy"):
    importlib.import_module(name)
EOF
}
if ! have_torch; then
  echo "== creating .venv (torch, diffusers, peft; pinned by scripts/requirements-fixtures.txt)"
  [ -x "$PY" ] || python3 -m venv .venv
  PINS=$(grep -E '^(torch|diffusers|peft|transformers|accelerate|huggingface_hub|safetensors|numpy)==' \
    scripts/requirements-fixtures.txt)
  # shellcheck disable=SC2086
  .venv/bin/pip install -q $PINS
  have_torch || { echo "bench_vs_torch: .venv still lacks torch/diffusers/peft" >&2; exit 1; }
fi
"$PY" -c 'import torch, diffusers, peft; print(f"== python: torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}")'

if [ -z "$SUMMARIZE" ]; then
# --- LibTorch for --backend tch -----------------------------------------------------------------
# burn-tch 0.21 builds against libtorch 2.9; PyPI's torch==2.9.0 wheel serves as libtorch
# (LIBTORCH_USE_PYTORCH=1), in its own environment (TCH_VENV, default local/tch-venv: about
# 6.7 GB with the CUDA libraries pip pulls in). The binary finds torch's libraries through
# LD_LIBRARY_PATH.
if [ "$BACKEND" = tch ]; then
  TCH_VENV=${TCH_VENV:-local/tch-venv}
  if ! "$TCH_VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.9.")' 2>/dev/null; then
    echo "== creating $TCH_VENV (torch 2.9.0 as libtorch for burn-tch)"
    python3 -m venv "$TCH_VENV"
    "$TCH_VENV/bin/pip" install -q torch==2.9.0
  fi
  TCH_VENV=$(cd "$TCH_VENV" && pwd)
  TORCH_LIB=$("$TCH_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  BUILD_ENV=(env LIBTORCH_USE_PYTORCH=1 "PATH=$TCH_VENV/bin:$PATH")
  CRATE_ENV=(env "LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  echo "== libtorch: $TORCH_LIB"
else
  BUILD_ENV=(env)
  CRATE_ENV=(env)
fi

# --- The crate's bench binary -------------------------------------------------------------------
FEATURES=()
[ "$BACKEND" = ndarray ] || FEATURES=(--features "$BACKEND")
echo "== building benches/vs_torch.rs (release profile${FEATURES:+, ${FEATURES[*]}})"
BIN=$("${BUILD_ENV[@]}" CARGO_INCREMENTAL=0 cargo bench --bench vs_torch --no-run "${FEATURES[@]}" \
        --message-format=json-render-diagnostics \
      | "$PY" -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "vs_torch":
        exe = msg.get("executable") or exe
print(exe or "")')
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "bench_vs_torch: no vs_torch executable from cargo" >&2; exit 1; }
echo "== crate binary: $BIN"
fi

# --- Runs ---------------------------------------------------------------------------------------
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# Waits until the machine is idle (under 0.15 busy cores over 5 s), at most IDLE_WAIT seconds and
# while the run's WAIT_BUDGET lasts; fails when it gave up.
WAITED=0
wait_idle() {
  local start now a b
  start=$(date +%s)
  while :; do
    a=$(busy_jiffies); sleep 5; b=$(busy_jiffies)
    now=$(date +%s)
    if [ $((b - a)) -lt 75 ]; then WAITED=$((WAITED + now - start)); return 0; fi
    if [ $((now - start)) -ge "$IDLE_WAIT" ] || [ $((WAITED + now - start)) -ge "$WAIT_BUDGET" ]; then
      WAITED=$((WAITED + now - start))
      return 1
    fi
  done
}

# run SIDE MODEL WORKLOAD ROUND ITERS INPUTS: one process under /usr/bin/time, redone (up to
# RETRIES times, after waiting for the machine to go idle) when other processes used more than
# 0.2 cores meanwhile; appends a row to $LOG: side model workload round time peak_rss_kb wall
# cpu other_cores loss(3) loss2(3) rss_loaded_kb (peak RSS before the first step).
run() {
  local side=$1 model=$2 workload=$3 round=$4 iters=$5 inputs=$6
  local stem="$OUT/$model-$workload-$side-$round"
  local cmd
  if [ "$side" = crate ]; then
    cmd=("${CRATE_ENV[@]}" "$BIN" --model "$model" --workload "$workload" --iters "$iters" --backend "$BACKEND"
         --root "$ROOT" --read-inputs "$inputs")
  else
    cmd=("$PY" scripts/bench_torch.py --model "$model" --workload "$workload" --iters "$iters"
         --read-inputs "$inputs" --threads 2)
  fi
  local before after attempt t loss loss2 loaded rss wall user sys other
  for attempt in $(seq 0 "$RETRIES"); do
    before=$(busy_jiffies)
    if ! /usr/bin/time -f '%M %e %U %S' -o "$stem.rss" "${cmd[@]}" >"$stem.out" 2>"$stem.err"; then
      echo "bench_vs_torch: $side $model/$workload failed:" >&2
      tail -n 20 "$stem.err" >&2
      exit 1
    fi
    after=$(busy_jiffies)
    read -r rss wall user sys < <(tail -n 1 "$stem.rss")
    other=$(awk -v b="$before" -v a="$after" -v u="$user" -v s="$sys" -v w="$wall" \
      'BEGIN { o = ((a - b) / 100 - u - s) / (w > 0 ? w : 1); printf "%.3f", (o < 0 ? 0 : o) }')
    if awk -v o="$other" 'BEGIN { exit !(o <= 0.2) }' || [ "$attempt" = "$RETRIES" ]; then
      break
    fi
    printf '   %-5s round %d: other processes used %.2f cores; waiting for an idle machine\n' \
      "$side" "$round" "$other"
    wait_idle || { echo "   (still busy: measuring anyway)"; break; }
  done
  t=$(awk '$1=="time"{print $2}' "$stem.out")
  loss=$(awk '$1=="loss"{print $2, $3, $4}' "$stem.out")
  loss2=$(awk '$1=="loss2"{print $2, $3, $4}' "$stem.out")
  loaded=$(awk '$1=="rss_loaded"{print $2}' "$stem.out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$side" "$model" "$workload" \
    "$round" "$t" "$rss" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" "$other" \
    "${loss// /,}" "${loss2// /,}" "${loaded:-0}" >>"$LOG"
  printf '   %-5s round %d: %8.4f s/iter, peak RSS %7.1f MiB, loss %s\n' "$side" "$round" "$t" \
    "$(awk -v r="$rss" 'BEGIN{print r/1024}')" "${loss%% *}"
}

# The losses of the first round must agree (and stay what the writing run computed).
check_losses() { # model workload written_loss
  "$PY" - "$LOG" "$1" "$2" "$3" <<'EOF'
import sys
log, model, workload, written = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [l.rstrip("\n").split("\t") for l in open(log)]
rows = [r for r in rows if r[1] == model and r[2] == workload]
def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)
crate = [list(map(float, r[9].split(","))) for r in rows if r[0] == "crate"]
torch = [list(map(float, r[9].split(","))) for r in rows if r[0] == "torch"]
w = list(map(float, written.split()))
names = ["total", "diffusion", "ctcal"]
worst = max(rel(a, b) for a, b in zip(crate[0], torch[0]))
print(f"   loss crate {' '.join(f'{x:.9g}' for x in crate[0])} | torch "
      f"{' '.join(f'{x:.9g}' for x in torch[0])} (total diffusion ctcal), max rel diff {worst:.2e}")
bad = [(n, a, b) for n, a, b in zip(names, crate[0], torch[0]) if rel(a, b) >= 1e-4]
bad += [("crate written vs read " + n, a, b) for n, a, b in zip(names, w, crate[0]) if rel(a, b) >= 1e-4]
if bad:
    for n, a, b in bad:
        print(f"bench_vs_torch: {model}/{workload}: {n} differs: {a!r} vs {b!r} "
              f"(rel {rel(a, b):.2e} >= 1e-4)", file=sys.stderr)
    sys.exit(1)
EOF
}

if [ -n "$SUMMARIZE" ]; then
  [ -s "$LOG" ] || { echo "bench_vs_torch: no runs in $LOG" >&2; exit 1; }
else
: >"$LOG"
for model in $MODELS; do
  for workload in $WORKLOADS; do
    iters=$(iters_for "$model" "$workload")
    inputs="$OUT/$model-$workload.inputs.safetensors"
    echo "== $model/$workload: writing inputs, then $ROUNDS rounds of $iters timed iterations per run"
    if ! "${CRATE_ENV[@]}" "$BIN" --model "$model" --workload "$workload" --iters 1 --backend "$BACKEND" \
        --root "$ROOT" --write-inputs "$inputs" >"$OUT/$model-$workload-write.out" \
        2>"$OUT/$model-$workload-write.err"; then
      echo "bench_vs_torch: writing the inputs of $model/$workload failed:" >&2
      tail -n 20 "$OUT/$model-$workload-write.err" >&2
      exit 1
    fi
    written=$(awk '$1=="loss"{print $2, $3, $4}' "$OUT/$model-$workload-write.out")
    for round in $(seq 1 "$ROUNDS"); do
      if [ $((round % 2)) = 1 ]; then order="crate torch"; else order="torch crate"; fi
      for side in $order; do
        run "$side" "$model" "$workload" "$round" "$iters" "$inputs"
      done
      if [ "$round" = 1 ]; then
        check_losses "$model" "$workload" "$written"
      fi
    done
  done
done

fi

# --- Summary ------------------------------------------------------------------------------------
"$PY" - "$LOG" "$BACKEND" "$(( $(date +%s) - START ))" "$WAITED" <<'EOF'
import statistics
import sys

log, backend, elapsed, waited = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(log)]
keys = []
for r in rows:
    if (r[1], r[2]) not in keys:
        keys.append((r[1], r[2]))

def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)

def side(model, workload, s):
    sel = [r for r in rows if r[0] == s and r[1] == model and r[2] == workload]
    t = statistics.median(float(r[4]) for r in sel)
    rss = statistics.median(float(r[5]) for r in sel) / 1024
    loss = [float(x) for x in sel[0][9].split(",")]
    loss2 = [float(x) for x in sel[0][10].split(",")] if sel[0][10] else None
    loaded = statistics.median(float(r[11]) for r in sel) / 1024
    cores = statistics.median(float(r[7]) / max(float(r[6]), 1e-9) for r in sel)
    return t, rss, loss, loss2, len(sel), loaded, cores

res = {}
print()
print(f"backend {backend}; medians over runs (each run: median of its timed iterations); "
      "MiB: peak RSS of the process (loaded: before the first step); cores: CPU time / wall "
      "time of the process")
hdr = (f"{'model/workload':<22} {'crate s':>9} {'torch s':>9} {'time x':>7} "
       f"{'crate MiB':>10} {'torch MiB':>10} {'mem x':>6} {'loaded MiB c/t':>15} "
       f"{'cores c/t':>9} {'loss rel':>9} {'loss2 rel':>9} runs")
print(hdr)
print("-" * len(hdr))
for model, workload in keys:
    c, t = side(model, workload, "crate"), side(model, workload, "torch")
    res[(model, workload)] = (c, t)
    d = max(rel(a, b) for a, b in zip(c[2], t[2]))
    d2 = max(rel(a, b) for a, b in zip(c[3], t[3])) if c[3] and t[3] else float("nan")
    print(f"{model + '/' + workload:<22} {c[0]:>9.4f} {t[0]:>9.4f} {c[0] / t[0]:>7.2f} "
          f"{c[1]:>10.1f} {t[1]:>10.1f} {c[1] / t[1]:>6.2f} {f'{c[5]:.0f}/{t[5]:.0f}':>15} "
          f"{f'{c[6]:.1f}/{t[6]:.1f}':>9} {d:>9.1e} {d2:>9.1e} {c[4]}+{t[4]}")
print()
for (model, workload), (c, t) in res.items():
    print(f"ratio {model}/{workload} {c[0] / t[0]:.4f}")
for (model, workload), (c, t) in res.items():
    print(f"mem {model}/{workload} {c[1] / t[1]:.4f}")
for model in dict.fromkeys(m for m, _ in keys):
    if (model, "plain") in res and (model, "ctcal") in res:
        (cp, tp), (cc, tc) = res[(model, "plain")], res[(model, "ctcal")]
        print(f"ratio {model}/ctcal-over-plain crate {cc[0] / cp[0]:.4f} torch {tc[0] / tp[0]:.4f}")
for (model, workload), (c, t) in res.items():
    d = max(rel(a, b) for a, b in zip(c[2], t[2]))
    print(f"loss {model}/{workload} crate {c[2][0]:.9g} torch {t[2][0]:.9g} rel {d:.2e}")
    if c[3] and t[3]:
        d2 = max(rel(a, b) for a, b in zip(c[3], t[3]))
        if d2 >= 1e-4:
            print(f"warning: {model}/{workload}: the loss after one optimiser step differs by "
                  f"{d2:.2e} relative (crate {c[3][0]:.9g}, torch {t[3][0]:.9g})")
other = [float(r[8]) for r in rows]
print(f"other processes' CPU during the runs: mean {statistics.mean(other):.2f} cores, "
      f"max {max(other):.2f}")
if max(other) > 0.2:
    print("warning: the machine was not idle during some runs; their times are not reliable")
print(f"elapsed {elapsed} s (of which {waited} s waiting for an idle machine)")
EOF
