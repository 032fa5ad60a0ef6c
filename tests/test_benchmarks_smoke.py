"""Benchmarks that cannot rot: each benchmarks/*.py runs in --smoke mode, ending in one RESULT line with a baseline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

GPU_ONLY: dict[str, str] = {}
"""Scripts that cannot run at all without CUDA, each with the reason it is not run here. None today: decode_gpu.py
and pretrain_gpu.py --smoke run their tiny dry shapes on the CPU (and exit with a message without CUDA otherwise)."""

VARIANTS: dict[str, list[list[str]]] = {"rag_probe.py": [["--decoding"]], "eval_decode.py": [["--shared-opening"]]}
"""Further --smoke runs of a script, with flags that take another code path."""


def scripts() -> list[str]:
    """Every benchmark script (private helpers such as _inputs.py excluded)."""
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def cases() -> list[Any]:
    """(script, extra flags) for every script not in GPU_ONLY, plus its VARIANTS."""
    return [pytest.param(name, extra, id=" ".join([name, *extra]))
            for name in scripts() if name not in GPU_ONLY for extra in [[], *VARIANTS.get(name, [])]]


def test_exclusions_name_scripts() -> None:
    assert scripts(), "no benchmark scripts found"
    stale = (set(GPU_ONLY) | set(VARIANTS)) - set(scripts())
    assert not stale, f"GPU_ONLY/VARIANTS name scripts that do not exist: {sorted(stale)}"


@pytest.mark.parametrize(("script", "extra"), cases())
def test_benchmark_smoke(script: str, extra: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", *extra], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-1000:]}\n{out.stderr[-2000:]}"
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1, out.stdout[-2000:]
    assert "baseline=" in result[0] and "ratio=" in result[0], result[0]
