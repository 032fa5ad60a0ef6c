"""Run a qihuang stage under `accelerate launch` on the CPU (DDP or DeepSpeed over gloo, this checkout's code) and
read back what it wrote: the per-step training losses and a loadable model."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")

_NO_DEEPSPEED = importlib.util.find_spec("deepspeed") is None
_DEEPSPEED = pytest.mark.skipif(_NO_DEEPSPEED, reason="deepspeed not installed (pip install -e '.[test]')")
LAUNCH_PRESETS = ["ddp.yaml", "fsdp.yaml", pytest.param("deepspeed_zero2.yaml", marks=_DEEPSPEED),
                  pytest.param("deepspeed_zero3.yaml", marks=_DEEPSPEED)]
"""The shipped presets the 2-process tests launch with: DDP, FSDP (torch's FSDP2 over gloo: parameters, gradients
and optimizer state sharded, gathered at save), DeepSpeed ZeRO-2 (optimizer state and gradients sharded) and ZeRO-3
(parameters sharded too, gathered at save), which DeepSpeed runs on the CPU over gloo."""

SHARDING = {"ddp.yaml": "ddp", "fsdp.yaml": "fsdp", "deepspeed_zero2.yaml": "deepspeed-zero2",
            "deepspeed_zero3.yaml": "deepspeed-zero3"}
"""The `sharding` a stage's summary records when launched with each preset on 2 processes."""


def flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags for config fields: {"max_length": 96} → ["--max-length", "96"]."""
    return [arg for key, value in settings.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def cpu_config(path: Path, processes: int, base: str = "ddp.yaml") -> Path:
    """The shipped accelerate config `base` turned to `processes` CPU processes (use_cpu, fp32, no GPU ids)."""
    import yaml

    cfg = yaml.safe_load((SRC / "qihuang" / "accelerate_configs" / base).read_text(encoding="utf-8"))
    cfg.update(num_processes=processes, use_cpu=True, mixed_precision="no")
    cfg.pop("gpu_ids", None)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_launch(config: Path, args: list[str], timeout: int = 300,
                      extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --config_file config -m qihuang args…` with this checkout's `src` first on the path
    (and `extra_env` set in the processes' environment)."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **(extra_env or {})}
    cmd = [ACCELERATE, "launch", "--config_file", str(config), "--main_process_port", str(_free_port()),
           "-m", "qihuang", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def step_losses(stage: Path) -> dict[int, float]:
    """{step: training loss} from a stage's metrics.jsonl; a step logged twice (by two processes) fails."""
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r["step"] for r in rows if "loss" in r and "step" in r]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}


def assert_same_losses(single: dict[int, float], ddp: dict[int, float], rel: float) -> float:
    """Both runs logged the same steps with losses within `rel`; the largest relative difference."""
    assert sorted(single) == sorted(ddp) and single
    worst = max(abs(ddp[k] - single[k]) / abs(single[k]) for k in single)
    assert worst <= rel, (single, ddp)
    return worst


def assert_loads(model_dir: Path) -> None:
    """The saved model loads through `qihuang.models.load_model` and gives finite logits."""
    import torch

    from qihuang.models import load_model

    model, tok = load_model(model_dir)
    ids = tok("何谓阴阳", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    """The two saved models' weights agree within `atol` (relative 1e-4)."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=atol)
