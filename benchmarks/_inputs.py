"""Inputs a benchmark builds for itself on a fresh clone: a small corpus made by `qihuang corpus build`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SMOKE_HELDOUT = "洄溪医案"
"""The smallest of the default held-out books: the held-out text of every --smoke corpus."""


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


def smoke_corpus(tmp: Path) -> Path:
    """The same 4 training books + 1 held-out book of ../shared/data/classics, built in-process into `tmp/corpus`
    (a few seconds; --smoke): the folder holding train.jsonl and heldout.jsonl."""
    from qihuang.config import ConfigError
    from qihuang.corpus import CorpusConfig, build_corpus
    from qihuang.runs import StageDir

    out = tmp / "corpus"
    if not (out / "train.jsonl").exists():
        cfg = CorpusConfig(max_books=4, heldout_books=[SMOKE_HELDOUT], library=False, workers=1, write_books=False)
        try:
            build_corpus(cfg, StageDir(out))
        except ConfigError as exc:
            raise SystemExit(f"--smoke needs the shared classics (../shared/data/classics): {exc}") from None
    return out
