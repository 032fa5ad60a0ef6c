#!/usr/bin/env bash
# Fresh machine → installed qihuang → the demo recipe end to end (runs/demo/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
qihuang models prepare smollm2-135m
qihuang run recipes/demo.yaml "$@"
echo "report: runs/demo/report.md"
