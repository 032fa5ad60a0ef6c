"""The instruct stage end to end: generate (offline generators, teacher) → refine → hold out → balance →
integrate into dialogues → mix general data → write ShareGPT/Alpaca/held-out/rejects files and the card."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from qihuang.config import ConfigError, data_file
from qihuang.instruct.card import write_card
from qihuang.instruct.integrate import heldout_records, integrate, load_general, mix, split_heldout, to_alpaca
from qihuang.instruct.offline import Lexicon, generate_offline
from qihuang.instruct.records import Pair, Passage, load_passages
from qihuang.instruct.refine import balance, reasons, refine
from qihuang.instruct.settings import InstructConfig
from qihuang.retrieval import PassageIndex
from qihuang.runs import MetricsLog, StageDir, read_jsonl, write_jsonl

GENERATED = "generated.jsonl"
GEN_REJECTS = "generate_rejects.jsonl"


def resolve_data(path: str | Path) -> Path:
    """An absolute or existing path as is; otherwise a file under the data root (qihuang.config.data_file)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        if not p.exists():
            raise ConfigError(f"data file {p} does not exist")
        return p
    return data_file(str(path))


def _check_ids(passages: list[Passage], path: Path) -> dict[str, Passage]:
    pmap: dict[str, Passage] = {}
    for p in passages:
        if p.id in pmap:
            raise ConfigError(f"{path}: duplicate passage id {p.id!r}")
        pmap[p.id] = p
    return pmap


def generate_step(cfg: InstructConfig, passages: list[Passage], out_dir: Path, log: MetricsLog) -> dict[str, Any]:
    """Run offline generators (and the teacher if configured); write generated.jsonl and generate_rejects.jsonl."""
    t0 = time.time()
    lex = Lexicon.load(resolve_data(cfg.lexicon)) if cfg.lexicon and cfg.generators else Lexicon(frozenset())
    pairs: list[Pair] = list(generate_offline(passages, cfg.generators, lex, cfg.pairs_per_passage, cfg.seed))
    covered = {p.passage_id for p in pairs}
    stats: dict[str, Any] = {"offline_pairs": len(pairs), "lexicon_terms": len(lex.terms),
                             "passages_without_offline_pairs": sum(p.id not in covered for p in passages)}
    log.log(step="generate_offline", pairs=len(pairs), seconds=round(time.time() - t0, 2))
    rejects: list[dict[str, Any]] = []
    aborted = None
    if cfg.teacher_url:
        from qihuang.instruct.selfqa import run_teacher

        cache = cfg.cache_dir or (out_dir / "teacher_cache")
        tpairs, trejects, tstats = run_teacher(cfg, passages, Path(cache), log)
        pairs += tpairs
        rejects += trejects
        stats["teacher"] = tstats
        aborted = tstats.get("aborted")
    write_jsonl(out_dir / GENERATED, (p.to_dict() for p in pairs))
    write_jsonl(out_dir / GEN_REJECTS, rejects)
    stats["generated_pairs"] = len(pairs)
    stats["by_generator"] = dict(Counter(p.generator.split(":")[0] + ":" + p.task_type for p in pairs).most_common())
    if aborted:
        from qihuang.instruct.teacher import TeacherUnreachable

        raise TeacherUnreachable("connect", f"teacher at {cfg.teacher_url} unreachable: {aborted}. Partial results "
                                 f"kept ({len(pairs)} pairs in {out_dir / GENERATED}, responses cached); "
                                 "rerun to resume without paying twice.")
    return stats


def _general(cfg: InstructConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in cfg.general_data:
        out += load_general(resolve_data(f))
    return out


def refine_step(cfg: InstructConfig, passages: list[Passage], out_dir: Path, log: MetricsLog,
                index: PassageIndex | None = None) -> dict[str, Any]:
    """generated.jsonl → refine → held-out split → balance → dialogues → mix; writes the stage's data files."""
    gen_path = out_dir / GENERATED
    if not gen_path.exists():
        raise ConfigError(f"{gen_path} not found: run `qihuang instruct generate` first")
    pmap = {p.id: p for p in passages}
    contexts = {p.id: p.context for p in passages}
    pairs = [Pair.from_dict(d) for d in read_jsonl(gen_path)]
    rejects = list(read_jsonl(out_dir / GEN_REJECTS)) if (out_dir / GEN_REJECTS).exists() else []
    t0 = time.time()
    kept, rej = refine(pairs, contexts.get, cfg, workers=cfg.workers)
    rejects += rej
    log.log(step="refine", pairs_in=len(pairs), kept=len(kept), seconds=round(time.time() - t0, 2))
    if cfg.teacher_judge:
        from qihuang.instruct.selfqa import judge_pairs

        kept, jrej = judge_pairs(cfg, kept, pmap, out_dir, log)
        rejects += jrej
    train, held = split_heldout(kept, cfg.heldout_fraction, cfg.seed)
    budget = min(len(train), cfg.max_pairs) if cfg.max_pairs is not None else len(train)
    train, drop = balance(train, lambda p: p.task_type, budget, cfg.targets(), cfg.max_type_share, cfg.seed,
                          "balance:task_type")
    rejects += drop
    if cfg.max_category_share < 1.0:
        train, drop = balance(train, lambda p: p.category, len(train), {}, cfg.max_category_share, cfg.seed,
                              "balance:category")
        rejects += drop
    rag_records: list[dict[str, Any]] = []
    rag_stats: dict[str, Any] = {}
    if index is not None and cfg.rag_ratio > 0:
        from qihuang.instruct.augment import augment

        rag_records, train_closed, rag_stats = augment(train, pmap, index, cfg)
    else:
        train_closed = train
    dialogues = integrate(train_closed, pmap, cfg.max_turns, cfg.seed) + rag_records
    general = _general(cfg) if cfg.general_data and cfg.general_ratio > 0 else []
    mixed, n_general = mix(dialogues, general, cfg.general_ratio, cfg.seed)
    if index is not None and cfg.rag_offtopic_ratio > 0:
        from qihuang.instruct.augment import decline_offtopic

        mixed, rag_stats["offtopic_declines"] = decline_offtopic(mixed, index, cfg)
    write_jsonl(out_dir / "train.jsonl", mixed)
    write_jsonl(out_dir / "train_alpaca.jsonl", (to_alpaca(r) for r in mixed))
    write_jsonl(out_dir / "heldout_qa.jsonl", heldout_records(held, pmap))
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    stats = {
        "pairs_in": len(pairs), "kept_after_filters": len(kept), "train_pairs": len(train),
        "heldout_qa": len(held), "dialogues": len(dialogues), "general_records": n_general,
        "train_records": len(mixed), "rejects": len(rejects), "rejects_by_reason": dict(reasons(rejects)),
        "train_by_task_type": dict(Counter(p.task_type for p in train).most_common()),
        "retrieval": rag_stats,
    }
    log.log(step="integrate", **{k: v for k, v in stats.items() if isinstance(v, int)})
    return stats


def training_index(cfg: InstructConfig, passages: Path) -> PassageIndex | None:
    """The training retriever's index (None when no record gets passages)."""
    if cfg.rag_ratio <= 0 and cfg.rag_offtopic_ratio <= 0:
        return None
    return PassageIndex.open(cfg.rag_index or passages)


def build_instructions(cfg: InstructConfig, passages: Path, out: StageDir) -> dict[str, Any]:
    """Write train.jsonl / train_alpaca.jsonl / heldout_qa.jsonl / rejects.jsonl / card.{md,json,png} into out.path."""
    out.path.mkdir(parents=True, exist_ok=True)
    log = out.metrics()
    try:
        items = load_passages(Path(passages), cfg.max_passages)
        _check_ids(items, Path(passages))
        log.log(step="load", passages=len(items))
        summary: dict[str, Any] = {"passages": len(items)}
        summary["generate"] = generate_step(cfg, items, out.path, log)
        summary["refine"] = refine_step(cfg, items, out.path, log, training_index(cfg, Path(passages)))
        card = write_card(out.path, extra={"passages": len(items), "generate": summary["generate"]})
        summary.update({k: card[k] for k in ("dialogues", "pairs_in_train", "general_records", "heldout_qa",
                                             "rejects", "by_task_type", "by_category", "grounding_mean")})
        summary["outputs"] = sorted(p.name for p in out.path.iterdir() if p.is_file())
        log.log(step="done", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return json.loads(json.dumps(summary, ensure_ascii=False, default=str))
    finally:
        log.close()
