#!/usr/bin/env bash
# Regenerates every parity fixture under tests/fixtures and the tiny embedded weights under
# weights/ from diffusers itself. One command, from the repository root:
#     bash scripts/make_fixtures.sh
# Parts: `--only unet` (UNet cases, schedules, ctcal_sd2, UNet manifests, weights/tiny-sd21) or
# `--only sd3` (MMDiT cases, ctcal_sd3, SD 3 manifests; scripts/fixtures_sd3.py) or `--only lora`
# (LoRA files and outputs on the unet_sd2 and mmdit_sd3 weights; scripts/fixtures_lora.py) or
# `--only sched` (DDIM / flow-matching Euler sampler references; scripts/fixtures_samplers.py).
# Not committed: `--full-size DEST` (random SD 2.1 UNet) and `--full-size-sd3 DEST` (random SD 3 medium
# transformer, about 8 GB). The noun captions are rewritten only by the plain command.
# It creates .venv (ignored by git) with the pinned requirements on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r scripts/requirements-fixtures.txt
.venv/bin/python scripts/make_fixtures.py "$@"
if [ "$#" -eq 0 ]; then
  .venv/bin/python scripts/make_noun_captions.py
  .venv/bin/python scripts/tiny_data.py
fi
