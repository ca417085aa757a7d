#!/usr/bin/env bash
# Regenerates every parity fixture under tests/fixtures and the tiny embedded weights under
# weights/ from diffusers itself. One command, from the repository root:
#     bash scripts/make_fixtures.sh
# `--only PART` regenerates one part (see PARTS in scripts/make_fixtures.py for what each
# writes): unet (UNet cases, schedules, ctcal_sd2, manifests, weights/tiny-sd21/unet), sd3
# (scripts/fixtures_sd3.py), lora (fixtures_lora.py), vae (fixtures_vae.py), tok (tokenizer
# folders trained on generated captions and transformers' ids; copies under weights/tiny-sd*),
# text (CLIP / T5 text encoders, fixtures_text_enc.py), sched (DDIM and flow Euler samplers,
# fixtures_samplers.py), pipeline (the tiny pipelines weights/tiny-sd21 and tiny-sd3 and
# end-to-end generation references, fixtures_pipeline.py).
# Not committed: `--full-size DEST` (random SD 2.1 UNet), `--full-size-sd3 DEST` (random SD 3
# medium transformer, about 8 GB) and `--full-size-pipeline DEST` (random SD 2.1 pipeline, about
# 5.2 GB, with diffusers' f32 512x512 generation as reference). The noun captions and weights/tiny-data are rewritten only by
# the plain command.
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
