#!/bin/bash
# Issue 8 device checks: the PyTorch anchors and the crate's gpu_step bench in one run, on one
# card, one workload per process (a failure costs one figure; peak device memory is read with
# nvidia-smi, so both sides are measured the same way).
#
# Prepare here (the GPU machine has no Rust toolchain and no internet):
#   cargo bench --features cuda-untuned --bench gpu_step --no-run   (or cuda: with autotuning)
#   and/or the LibTorch build, against the PyTorch the machine has (2.11.0+cu130; its wheel's
#   torch/ folder unpacked here as LIBTORCH, e.g. local/dl/t211/torch):
#     LIBTORCH=... LIBTORCH_BYPASS_VERSION_CHECK=1 RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" \
#       cargo build --release --features tch --bench gpu_step     (strip, xz -> local/carry/gpu_step_tch.xz)
#   mkdir -p local/carry && cp ../shared/bench/torch_anchor.py ../shared/bench/torch_block.py local/carry/
#   strip -o local/carry/gpu_step target/release/deps/gpu_step-<hash> && xz -T2 local/carry/gpu_step
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata
# then, with the device tool: carry [".whl", "local/carry"], command
#   DEADLINE=540 bash scripts/gpu_check.sh
# The device tool returns only a few files from $OUT, none large: each check's log is appended
# to $OUT/items.log, its peak memory and mean nvidia-smi utilisation (kernel time share)
# over 100 ms samples, start-up included) to summary.txt; the kernel caches stay on the machine.
set -u
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
unpack() { # local/carry/NAME.xz -> /tmp/NAME, when carried
  [ -f local/carry/$1.xz ] || return 0
  python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('local/carry/$1.xz'),open('/tmp/$1','wb'))" && chmod +x /tmp/$1
}
BIN=/tmp/gpu_step
unpack gpu_step
# The LibTorch build (`--features tch`) links the machine's own PyTorch libraries.
TCH=/tmp/gpu_step_tch
unpack gpu_step_tch
export LD_LIBRARY_PATH=$(python3 -c 'import os,torch;print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Persistent kernel and autotune caches (cubecl reads cubecl.toml from the working directory),
# and logs of what it compiles and tunes.
CACHE=$PWD/local/carry/cubecl-cache
mkdir -p $CACHE
cat > cubecl.toml <<TOML
[compilation]
cache = { file = "$CACHE/compilation" }
[compilation.logger]
level = "basic"
file = "$OUT/cubecl-compilation.log"
[autotune]
cache = { file = "$CACHE/autotune" }
[autotune.logger]
level = "minimal"
file = "$OUT/cubecl-autotune.log"
TOML

item() { # name timeout command...: runs one workload under its own limit, logs peak memory
  local name=$1 t=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ $left -lt 20 ]; then echo "$name skipped (deadline)" | tee -a $S; return; fi
  [ $t -gt $left ] && t=$left
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 100 > /tmp/mem_$name.txt 2>/dev/null &
  local mon=$! start=$SECONDS
  timeout -k 5 $t "$@" > /tmp/$name.log 2>&1
  local rc=$?
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  { echo "=== $name: $*"; cat /tmp/$name.log; } >> $OUT/items.log
  echo "$name rc=$rc wall=$((SECONDS - start))s limit=${t}s peak_used_mib=$(sort -n /tmp/mem_$name.txt | tail -1 | cut -d, -f1) gpu_util_mean=$(awk -F', *' '{s += $2} END {printf "%.0f", s / (NR ? NR : 1)}' /tmp/mem_$name.txt)" | tee -a $S
  grep -E '^\{|^torch|^sd21 |^sd3 |rror|panicked' /tmp/$name.log | head -20 | tee -a $S
}

# ITEMS picks and orders the checks (default: all, in this order).
ITEMS=${ITEMS:-"torch_block torch_anchor block_f32 attn_f32 sd21_f32 sd3_f32 block_bf16 sd21_bf16 sd21_mixed sd3_mixed repro_burn_attention"}
for it in $ITEMS; do
  case $it in
  torch_block) item torch_block 70 python3 local/carry/torch_block.py ;;
  torch_anchor) item torch_anchor 150 python3 local/carry/torch_anchor.py --iters 5 --out $OUT/torch_anchor.json ;;
  torch_anchor_b1) item torch_anchor_b1 150 python3 local/carry/torch_anchor.py --iters 5 --batch 1 --out $OUT/torch_anchor_b1.json ;;
  block_f32) item block_f32 120 $BIN --workload block --dtype f32 --iters 5 ;;
  attn_f32) item attn_f32 60 $BIN --workload attn --dtype f32 --iters 10 ;;
  sd21_f32) item sd21_f32 180 $BIN --workload sd21 --dtype f32 --iters 3 ;;
  sd3_f32) item sd3_f32 150 $BIN --workload sd3 --dtype f32 --iters 3 --plain-only ;;
  block_bf16) item block_bf16 90 $BIN --workload block --dtype bf16 --iters 5 ;;
  sd21_bf16) item sd21_bf16 150 $BIN --workload sd21 --dtype bf16 --iters 3 ;;
  block_mixed) item block_mixed 60 $BIN --workload block --dtype mixed --iters 5 ;;
  sd21_mixed) item sd21_mixed 180 $BIN --workload sd21 --dtype mixed --iters 3 ;;
  sd3_mixed) item sd3_mixed 180 $BIN --workload sd3 --dtype mixed --iters 3 --plain-only ;;
  repro_burn_attention) item repro_burn_attention 40 $BIN --workload attn --dtype f32 --iters 3 --burn-autodiff ;;
  tch_check) item tch_check 60 $TCH --backend tch --workload attn-check --batch 2 ;;
  tch_block_mixed) item tch_block_mixed 60 $TCH --backend tch --workload block --dtype mixed --iters 5 ;;
  tch_sd21_mixed) item tch_sd21_mixed 120 $TCH --backend tch --workload sd21 --dtype mixed --iters 5 ${EXTRA:-} ;;
  tch_sd3_mixed) item tch_sd3_mixed 120 $TCH --backend tch --workload sd3 --dtype mixed --iters 5 --plain-only ${EXTRA:-} ;;
  tch_sd21_bf16) item tch_sd21_bf16 120 $TCH --backend tch --workload sd21 --dtype bf16 --iters 5 ${EXTRA:-} ;;
  tch_sd21_f32) item tch_sd21_f32 120 $TCH --backend tch --workload sd21 --dtype f32 --iters 3 ;;
  *) echo "unknown item $it" | tee -a $S ;;
  esac
done
echo "total ${SECONDS}s" | tee -a $S
