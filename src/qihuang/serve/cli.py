"""`qihuang chat`, `qihuang serve`, `qihuang search` commands (thin: config → engine/index → app or loop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError
from qihuang.serve.settings import ChatConfig, RetrievalConfig, SearchConfig, ServeConfig


def _passages_for(cfg: RetrievalConfig, model: str) -> Path | None:
    """--passages, else a run dir given as --model (its index stage's choice, else corpus/library.jsonl, else
    corpus/train.jsonl: see qihuang.retrieval.resolve_passages)."""
    from qihuang.retrieval import RUN_FILES

    if cfg.passages is not None:
        return cfg.passages
    run = Path(model)
    return run if any((run / "corpus" / name).exists() for name in RUN_FILES) else None


def _open_index(path: Path | None) -> Any:
    from qihuang.retrieval import PassageIndex

    if path is None:
        return None
    index = PassageIndex.open(path)
    click.echo(f"passages: {len(index.passages)} from {index.source} (index loaded in {index.load_seconds:.3f}s)",
               err=True)
    return index


def load_engine(model: str, engine: str = "hf", device: str = "cpu", threads: int = 0,
                adapters: list[str] | None = None, max_batch: int = 1) -> Any:
    """The chosen backend with the model loaded (`max_batch`: requests the hf engine decodes together)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if engine == "vllm":
        from qihuang.serve.vllm_engine import VLLMEngine

        pairs = dict(a.split("=", 1) for a in adapters or [])
        return VLLMEngine.load(model, adapters={k.strip(): v.strip() for k, v in pairs.items()})
    from qihuang.serve.engine import Engine

    return Engine.load(model, device=device, max_batch=max_batch)


@click.command("serve")
@config_options(ServeConfig)
def serve_cli(cfg: ServeConfig) -> None:
    """OpenAI-compatible API (/v1/chat/completions, /v1/models, /health, /docs) and web chat at /."""
    import uvicorn

    from qihuang.serve.app import create_app

    index = _open_index(_passages_for(cfg, cfg.model))
    engine = load_engine(cfg.model, cfg.engine, cfg.device, cfg.threads, cfg.adapters, cfg.max_concurrency)
    app = create_app(engine, index, cfg)
    click.echo(f"serving {engine.name} on http://{cfg.host}:{cfg.port}/ (API: /v1/chat/completions)", err=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=int(cfg.shutdown_grace_s) + 5)


@click.command("chat")
@config_options(ChatConfig)
def chat_cli(cfg: ChatConfig) -> None:
    """Terminal chat: streaming, history, /reset, /cite on|off; shows citations."""
    from qihuang.serve.chat import run_chat

    index = _open_index(_passages_for(cfg, cfg.model))
    engine = load_engine(cfg.model, "hf", cfg.device, cfg.threads)
    run_chat(engine, index, cfg)


@click.command("search")
@click.argument("query")
@config_options(SearchConfig)
def search_cli(query: str, cfg: SearchConfig) -> None:
    """Search the classics: ranked passages for QUERY (BM25, no model needed)."""
    from qihuang.retrieval import PassageIndex, best_span

    try:
        index = PassageIndex.open(cfg.passages, rebuild=cfg.rebuild)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    hits = index.search(query, cfg.k)
    if not hits:
        click.echo("no passage matches", err=True)
    for hit in hits:
        p = hit.passage
        s, e = best_span(p.text, query)
        if cfg.json:
            click.echo(json.dumps({"rank": hit.rank, "score": round(hit.score, 4), "id": p.id, "book": p.book,
                                   "section": p.section, "quote": p.text[s:e], "text": p.text}, ensure_ascii=False))
        else:
            click.echo(f"{hit.rank:>2}. {p.title} [{p.id}] score {hit.score:.2f}\n    {p.text[s:e]}")
