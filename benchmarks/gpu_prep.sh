#!/usr/bin/env bash
# Here, before a GPU call (#14 item 7): gather into .gpucheck/ (git-ignored; it travels with `carry`, and the working
# tree that travels may hold 64 MiB) what a bare GPU machine lacks for benchmarks/gpu_check.sh:
#   whl/    Python 3.12 x86-64 wheels of the packages qihuang needs that the device image does not have (trl,
#           datasets, jieba, fastapi …, at the versions of this .venv) and liger-kernel (for the Liger anchor row)
#   data/   a data folder shaped like ../shared/data: BOOKS classics spread over the library, the general and
#           preference files the recipes read, one MCQ file, the lexicon
#   model/  SmolLM2-135M's config and tokenizer, no weights (its 98 MB GGUF cannot travel; the check gives that shape
#           random weights: speed and "it runs on CUDA" are measured, not the real model's quality)
#   bench/  copies of ../shared/bench/anchor_hf.py and anchor_opt.py, so anchors and ours run on one card
# Usage: bash benchmarks/gpu_prep.sh [BOOKS]   (default 60; the folder's size is printed and checked)
set -euo pipefail
cd "$(dirname "$0")/.."
BOOKS=${1:-60}
G=.gpucheck
. .venv/bin/activate
DATA=$(python -c "from qihuang.config import data_root; r = data_root(); print(r or '')")
[ -n "$DATA" ] || { echo "gpu_prep: no data folder (\$QIHUANG_DATA_ROOT unset, no ../shared/data)" >&2; exit 2; }
BENCH="$DATA/../bench"
rm -rf "$G" && mkdir -p "$G"/whl "$G"/data/{classics,general_sft,preference,lexicon,eval/tcmchat_choice} "$G"/bench "$G"/model

pins=$(python - <<'EOF'
import importlib.metadata as m
names = ("trl datasets dill multiprocess xxhash gguf opencc-python-reimplemented rouge-chinese datasketch pydantic "
         "pydantic-core annotated-types typing-inspection fastapi starlette uvicorn sse-starlette openai jiter "
         "sniffio distro").split()
out = []
for n in names:
    try:
        out.append(f"{n}=={m.version(n)}")
    except m.PackageNotFoundError:
        out.append(n)  # not in this .venv (distro: openai's, optional here): the newest
print(" ".join(out))
EOF
)
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d "$G/whl" $pins liger-kernel
python -m pip wheel -q --no-deps -w "$G/whl" "jieba==$(python -c 'import importlib.metadata as m; print(m.version("jieba"))')"

ls "$DATA/classics" | awk -v n="$BOOKS" '{f[NR]=$0} END{step=NR/n; for(i=0;i<n;i++) print f[int(i*step)+1]}' \
  | while read -r book; do cp "$DATA/classics/$book" "$G/data/classics/"; done
cp "$DATA/general_sft/alpaca_zh_demo_1k.json" "$DATA/general_sft/medical_sft_1k.jsonl" "$G/data/general_sft/"
cp "$DATA/preference/dpo_zh_500.jsonl" "$G/data/preference/"
cp "$DATA"/eval/tcmchat_choice/choice_herb_500.csv "$DATA"/eval/tcmchat_choice/choice_formula_500.csv \
  "$G/data/eval/tcmchat_choice/"
cp "$DATA"/lexicon/* "$G/data/lexicon/"

MODEL=$(python -c "from qihuang.models import prepare_model; print(prepare_model('smollm2-135m'))")
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
         chat_template.jinja qihuang_template.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" "$G/model/"
done
cp "$BENCH/anchor_hf.py" "$BENCH/anchor_opt.py" "$G/bench/"

size=$(du -sm "$G" | cut -f1)
echo "gpu_prep: $G holds ${size} MiB ($(ls "$G/whl" | wc -l) wheels, $(ls "$G/data/classics" | wc -l) books)"
[ "$size" -le 60 ] || { echo "gpu_prep: over 60 MiB: carry fewer books (bash benchmarks/gpu_prep.sh 30)" >&2; exit 1; }
