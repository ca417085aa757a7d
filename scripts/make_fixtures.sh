#!/usr/bin/env bash
# Regenerates every parity fixture under tests/fixtures and the tiny embedded weights under
# weights/ from diffusers itself. One command, from the repository root:
#     bash scripts/make_fixtures.sh
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
fi
