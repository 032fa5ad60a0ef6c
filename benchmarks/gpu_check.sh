#!/usr/bin/env bash
# The one call to make when a GPU is lent (#14 item 7). Here first: `bash benchmarks/gpu_prep.sh` (fills .gpucheck/),
# then with the device tool:   run(command="bash benchmarks/gpu_check.sh", carry=[".gpucheck"], timeout_s=600)
# Parts, most important first, each in a time box (seconds below) so that a failure or a hang costs only its box:
#   env       nvidia-smi, python and package versions; the carried wheels installed into /tmp/site
#   recipe    recipes/gpu.yaml shortened (the carried books, SmolLM2-135M's shape with random weights, stages of
#             ~30 s): every stage on CUDA in bf16 — pretrain, SFT, DPO, batched eval, chat
#   sft       benchmarks/sft_gpu.py: our SFT against plain TRL SFTTrainer, same model and data (#14: >= 1.15x)
#   pretrain  benchmarks/pretrain_gpu.py --only 1.1B --baseline, then the anchor's own 1.1B + Liger row
#             (../shared/bench/anchor_opt.py's settings; #14: ours >= 1.15x the best anchor)
#   vllm      the vLLM engine, when vllm is importable (the image has none, and it is too large to carry)
# What comes back ($OUT, at most 8 files): summary.txt (each part's status, then every RESULT line), gpu_check.log
# (all output) and each part's files as it ends (recipe_report.md, sft_sft_gpu.json, pretrain_pretrain_gpu.json,
# pretrain_anchor_hf.json) — a call cut at its limit still returns what the finished parts wrote.
# --dry: every part on this CPU with tiny shapes and no bundle (CI: tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
WORK=$(mktemp -d); LOG="$OUT/gpu_check.log"; SUMMARY="$OUT/summary.txt"; : >"$LOG"; : >"$SUMMARY"
PY=${PYTHON:-python3}  # the device image's python3 holds torch; here the checkout's .venv when there is one
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY="$PWD/.venv/bin/python"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part NAME SECONDS FUNCTION: run it in its box (its own $OUT folder), log it, record its status
  local name=$1 box=$2 fn=$3
  mkdir -p "$WORK/$name"
  echo "=== $name (box ${box}s) $(date -u +%T)" | tee -a "$LOG"
  local t0=$SECONDS
  OUT="$WORK/$name" timeout --kill-after=10 "$box" bash -c "$fn" >>"$LOG" 2>&1
  local rc=$? status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="timed out"; elif [ $rc -ne 0 ]; then status="failed (exit $rc)"; fi
  echo "$name: $status in $((SECONDS - t0)) s" | tee -a "$SUMMARY" "$LOG"
  for f in "$WORK/$name"/*; do [ -f "$f" ] && cp "$f" "$OUT/${name}_$(basename "$f")"; done  # back as it ends
}

env_part() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi | head -15; else echo "no nvidia-smi"; fi
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || return
  if [ $DRY -eq 0 ] && [ -d .gpucheck/whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpucheck/whl/*.whl || return
  fi
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|trl|peft|accelerate|datasets|liger|vllm|deepspeed) " || true
}

recipe_part() {
  if [ $DRY -eq 1 ]; then
    "$PY" -m qihuang run recipes/gpu.yaml --dry-run; return
  fi
  "$PY" benchmarks/sft_gpu.py --random-weights .gpucheck/model /tmp/smol135m-random || return
  QIHUANG_DATA_ROOT="$PWD/.gpucheck/data" "$PY" -m qihuang run recipes/gpu.yaml --set name=gpucheck \
    --set model=/tmp/smol135m-random --set pretrain.max_minutes=0.5 --set sft.max_minutes=0.5 \
    --set dpo.max_minutes=0.25 --set eval.heldout_qa_n=40 --set eval.mcq_limit=100 --set chat.max_new_tokens=32
  local rc=$?
  cp runs/gpucheck/report.md "$OUT/" 2>/dev/null
  return $rc
}

sft_part() {
  if [ $DRY -eq 1 ]; then "$PY" benchmarks/sft_gpu.py --smoke; return; fi
  QIHUANG_DATA_ROOT="$PWD/.gpucheck/data" "$PY" benchmarks/sft_gpu.py --model .gpucheck/model --steps 40
}

pretrain_part() {
  local anchors=.gpucheck/bench
  if [ $DRY -eq 1 ]; then
    "$PY" benchmarks/pretrain_gpu.py --smoke || return
    anchors=$(dirname "$("$PY" -c 'from qihuang.config import data_root; print(data_root())')")/bench
    export ANCHOR_DRY=1
  else
    "$PY" benchmarks/pretrain_gpu.py --only 1.1B --baseline || return
  fi
  # the anchor's 1.1B + Liger row (anchor_opt.py's settings), its own code, this card
  (cd "$anchors" && "$PY" -c "
from anchor_hf import main, TINYLLAMA
import torch
main([('train', dict(name='1.1B full CPT + liger', shape=TINYLLAMA, lora=False, seq=2048, mb=8, steps=6, gc=False,
                     dtype=torch.float32, liger=True))])")
}

vllm_part() {
  if ! "$PY" -c "import vllm" 2>/dev/null; then echo "vllm is not installed here: the vLLM engine was not run"; return 0; fi
  "$PY" -m pytest -q tests/serve -k vllm
}

export DRY PY
export -f env_part recipe_part sft_part pretrain_part vllm_part
if [ $DRY -eq 1 ]; then BOX=(120 300 300 300 60); else BOX=(60 230 100 150 20); fi  # 560 s: inside a 600 s call
part env "${BOX[0]}" env_part
[ $DRY -eq 0 ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
part recipe "${BOX[1]}" recipe_part
part sft "${BOX[2]}" sft_part
part pretrain "${BOX[3]}" pretrain_part
part vllm "${BOX[4]}" vllm_part
grep -h "^RESULT " "$LOG" >>"$SUMMARY"
cat "$SUMMARY"
