"""Inputs a benchmark builds for itself on a fresh clone: a small corpus made by `qihuang corpus build`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def corpus_file(path: Path, tmp: Path, name: str) -> Path:
    """`path` when it exists; else `name` (train.jsonl, heldout.jsonl) of a 12-book corpus built once into `tmp`."""
    if path.exists():
        return path
    out = tmp / "corpus"
    if not (out / name).exists():
        cmd = [sys.executable, "-m", "qihuang", "corpus", "build", "--max-books", "12", "--out", str(out),
               "--no-library"]
        print(f"{path} not found: building a small corpus first ({' '.join(cmd[1:])})", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / name
