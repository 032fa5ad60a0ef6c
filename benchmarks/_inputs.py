"""Inputs a benchmark builds for itself on a fresh clone: a small corpus made by `qihuang corpus build`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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


def heldout_questions(run: Path, n: int, tmp: Path) -> tuple[list[dict[str, Any]], Path]:
    """(held-out-book questions, what `PassageIndex.open` takes): the run's eval QA and index when the run has them
    (`runs/demo` after `qihuang run recipes/demo.yaml`), else questions the eval's own generators make from the
    smoke corpus's held-out book, asked over its training and held-out passages together (a fresh clone)."""
    import json

    qa = run / "eval" / "heldout_books_qa.jsonl"
    if qa.exists():
        items = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
        return items[:: max(1, len(items) // n)][:n], run
    from qihuang.evaluate.heldout_qa import build_heldout_qa

    print(f"{qa} not found (run `qihuang run recipes/demo.yaml` for the demo's): questions from the smoke corpus",
          flush=True)
    corpus = smoke_corpus(tmp)
    library = tmp / "library.jsonl"
    library.write_bytes((corpus / "train.jsonl").read_bytes() + (corpus / "heldout.jsonl").read_bytes())
    return build_heldout_qa(corpus / "heldout.jsonl", n, seed=0), library


def model_or_base(spec: str, base: str = "smollm2-135m") -> str:
    """`spec` when it is a folder that exists (a run's model) or not a path at all (a preset), else `base`, saying
    so: a benchmark's default model may be one a fresh clone has not trained yet."""
    if spec.startswith("runs/") and not Path(spec).exists():
        print(f"{spec} not found (a run's model; run `qihuang run recipes/demo.yaml`): using {base}", flush=True)
        return base
    return spec
