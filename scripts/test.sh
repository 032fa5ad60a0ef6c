#!/usr/bin/env bash
# Fresh machine → installed qihuang with test tools → the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
. .venv/bin/activate
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q "$@" tests
