"""The `index` stage: build (or reuse from the cache) the retrieval index of a run's library once, so serving only
opens it; `qihuang index build` runs it alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from qihuang.cliutil import config_options, run_stage_command
from qihuang.config import ConfigError
from qihuang.runs import StageDir, write_json


@dataclass
class IndexConfig:
    """Which passages the retrieval index covers and how they are segmented."""

    segmentation: Literal["char", "jieba"] = "char"
    """char: every CJK character + every pair of neighbours (chosen with benchmarks/retrieval_index.py, which
    compares quote accuracy and build time of both on the same passages; no lexicon); jieba: words with the TCM
    lexicon + characters."""
    source: Literal["library", "train"] = "library"
    """library: corpus/library.jsonl (every book; falls back to train.jsonl when the corpus stage wrote no
    library); train: corpus/train.jsonl (the training books only)."""
    rebuild: bool = False
    """Rebuild even when the cache holds an index of the same passages."""


def passages_file(cfg: IndexConfig, corpus_dir: Path) -> Path:
    """The corpus file the index is built from (library.jsonl, else train.jsonl)."""
    from qihuang.retrieval import RUN_FILES

    names = list(RUN_FILES) if cfg.source == "library" else ["train.jsonl"]
    for name in names:
        if (corpus_dir / name).exists():
            return corpus_dir / name
    raise ConfigError(f"{corpus_dir}: none of {names} found; run the corpus stage first "
                      f"(`qihuang corpus build --out {corpus_dir}`)")


def build_index(cfg: IndexConfig, corpus_dir: Path, out: StageDir) -> dict[str, Any]:
    """Open (building once, cached by content) the index of the run's passages; write `index.json` (the choice
    serving follows: passages file, segmentation, cache folder, fingerprint) and return a summary."""
    from qihuang.retrieval import PassageIndex

    out.path.mkdir(parents=True, exist_ok=True)
    path = passages_file(cfg, corpus_dir)
    t0 = time.perf_counter()
    index = PassageIndex.open(path, segmentation=cfg.segmentation, rebuild=cfg.rebuild)
    seconds = time.perf_counter() - t0
    meta = index.meta
    t1 = time.perf_counter()
    probe = index.search(index.passages[0].text[:24], 1)
    summary = {
        "passages": len(index.passages), "source": path.name, "segmentation": index.segmentation,
        "reused": not index.built,
        "build_seconds": meta.get("build_seconds"), "peak_rss_mb": meta.get("peak_rss_mb"),
        "open_seconds": round(seconds, 3), "query_seconds": round(time.perf_counter() - t1, 4),
        "terms": meta.get("terms"), "nnz": meta.get("nnz"), "cache_dir": meta.get("dir"),
        "fingerprint": meta.get("fingerprint"), "probe_found_itself": bool(probe) and probe[0].passage.id ==
        index.passages[0].id,
    }
    write_json(out.path / "index.json", {"passages": path.name, "segmentation": index.segmentation,
                                         "cache_dir": meta.get("dir"), "fingerprint": meta.get("fingerprint")})
    metrics = out.metrics()
    metrics.log(event="done", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    metrics.close()
    return summary


@click.group("index")
def index_cli() -> None:
    """Retrieval index: build the BM25 index of a run's library once (serving then only opens it)."""


@index_cli.command("build")
@config_options(IndexConfig)
@click.option("--corpus", "corpus_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs/default/corpus"), show_default=True,
              help="Corpus stage folder holding library.jsonl / train.jsonl.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Stage folder for index.json and the summary [default: <corpus>/../index].")
@click.option("--force", is_flag=True, help="Rerun even if the stage folder is marked done.")
def build_cmd(cfg: IndexConfig, corpus_dir: Path, out_path: Path | None, force: bool) -> None:
    """Build (or reuse from the cache) the index of CORPUS's library and print its summary."""
    try:
        run_stage_command(out_path or corpus_dir.parent / "index", cfg,
                          lambda out: build_index(cfg, corpus_dir, out), force=force)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

