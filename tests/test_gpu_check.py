"""benchmarks/gpu_check.sh, the one call a lent GPU gets (#14 item 7), cannot rot: `--dry` runs every part on the CPU
with tiny shapes and the summary names each part's status and the RESULT lines with their baselines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_runs_every_part(tmp_path: Path) -> None:
    from qihuang.config import data_root

    root = data_root()
    if root is None or not (root.parent / "bench" / "anchor_hf.py").exists():
        pytest.skip("no ../shared/bench beside the data folder (the anchors' dry run needs it)")
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text(encoding="utf-8")
    log = (tmp_path / "gpu_check.log").read_text(encoding="utf-8")
    assert out.returncode == 0, log[-3000:]
    for name in ("env", "recipe", "sft", "pretrain", "vllm"):
        assert f"{name}: ok" in summary, f"{summary}\n{log[-3000:]}"
    assert "RESULT sft_gpu" in summary and "RESULT pretrain_gpu" in summary, summary
    assert "1.1B full CPT + liger" in log  # the anchor's own row ran (its dry shape)
    assert (tmp_path / "sft_sft_gpu.json").exists() and (tmp_path / "pretrain_pretrain_gpu.json").exists()
    assert len([f for f in tmp_path.iterdir() if f.is_file()]) <= 8  # what the device tool brings back


def test_random_weights_of_a_carried_config_and_tokenizer(tmp_path: Path) -> None:
    """What travels to the GPU machine is a config + tokenizer; the check gives that shape random weights."""
    import shutil
    import sys

    from transformers import AutoModelForCausalLM

    from qihuang.models import prepare_model

    carried = tmp_path / "carried"
    shutil.copytree(prepare_model("tiny-llama"), carried, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sft_gpu.py"), "--random-weights", str(carried),
                          str(tmp_path / "model")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.hidden_size == AutoModelForCausalLM.from_pretrained(prepare_model("tiny-llama")).config.hidden_size
    assert (tmp_path / "model" / "tokenizer.json").exists()
