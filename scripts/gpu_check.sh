#!/bin/bash
# Issue 8 device checks: the PyTorch anchors and the crate's gpu_step bench in one run, on one
# card, one workload per process (a failure costs one figure; peak device memory is read with
# nvidia-smi, so both sides are measured the same way).
#
# Prepare here (the GPU machine has no Rust toolchain and no internet):
#   cargo bench --features cuda-untuned --bench gpu_step --no-run   (or cuda: with autotuning)
#   mkdir -p local/carry && cp ../shared/bench/torch_anchor.py ../shared/bench/torch_block.py local/carry/
#   strip -o local/carry/gpu_step target/release/deps/gpu_step-<hash> && xz -T2 local/carry/gpu_step
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata
# then, with the device tool: carry [".whl", "local/carry"], command
#   DEADLINE=540 bash scripts/gpu_check.sh
# The device tool returns only a few files from $OUT, none large: each check's log is appended
# to $OUT/items.log, its peak memory to summary.txt, and the kernel caches stay on the machine.
set -u
export PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-540}
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
BIN=/tmp/gpu_step
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('local/carry/gpu_step.xz'),open('$BIN','wb'))" && chmod +x $BIN
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
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem_$name.txt 2>/dev/null &
  local mon=$! start=$SECONDS
  timeout -k 5 $t "$@" > /tmp/$name.log 2>&1
  local rc=$?
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  { echo "=== $name: $*"; cat /tmp/$name.log; } >> $OUT/items.log
  echo "$name rc=$rc wall=$((SECONDS - start))s limit=${t}s peak_used_mib=$(sort -n /tmp/mem_$name.txt | tail -1)" | tee -a $S
  grep -E '^\{|^torch|^sd21 |^sd3 |rror|panicked' /tmp/$name.log | head -20 | tee -a $S
}

# ITEMS picks and orders the checks (default: all, in this order).
ITEMS=${ITEMS:-"torch_block torch_anchor block_f32 attn_f32 sd21_f32 sd3_f32 block_bf16 sd21_bf16 sd21_mixed sd3_mixed repro_burn_attention"}
for it in $ITEMS; do
  case $it in
  torch_block) item torch_block 70 python3 local/carry/torch_block.py ;;
  torch_anchor) item torch_anchor 150 python3 local/carry/torch_anchor.py --iters 5 --out $OUT/torch_anchor.json ;;
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
  *) echo "unknown item $it" | tee -a $S ;;
  esac
done
echo "total ${SECONDS}s" | tee -a $S
