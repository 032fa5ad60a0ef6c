"""Benchmarks that cannot rot: the retrieval-quality benchmarks run end to end in their smoke mode (seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["rag_probe.py", "rag_probe.py --decoding", "retrieval_index.py"])
def test_benchmark_smoke(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    name, *extra = script.split()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--smoke", *extra], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "baseline=" in result[0] and "ratio=" in result[0]
