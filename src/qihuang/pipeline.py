"""`qihuang run RECIPE.yaml`: chain corpus → index → tokenizer → pretrain → instruct → sft → dpo → eval → chat sample
into `runs/<name>/`, skipping finished stages, and end with `runs/<name>/report.md`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qihuang.config import ConfigError, check_ranges, from_mapping, load_yaml, to_mapping
from qihuang.corpus import CorpusConfig, build_corpus
from qihuang.evaluate import EvalConfig, evaluate_models
from qihuang.finetune.preference import DPOConfig, dpo
from qihuang.finetune.sft import SFTConfig, sft
from qihuang.index import IndexConfig, build_index
from qihuang.instruct import InstructConfig, build_instructions
from qihuang.models import DEFAULT_MODEL, prepare_model
from qihuang.pretrain import PretrainConfig, pretrain
from qihuang.runs import StageDir, atomic_open, changed_fields, run_stage, stage_dir, write_json
from qihuang.stageproc import run_in_process, under_distributed_launch
from qihuang.tokenizer import TokenizerConfig, extend_tokenizer

STAGES = ("corpus", "index", "tokenizer", "pretrain", "instruct", "sft", "dpo", "eval", "chat")
DEPENDS: dict[str, tuple[str, ...]] = {
    "corpus": (), "index": ("corpus",), "tokenizer": ("corpus",), "pretrain": ("corpus", "tokenizer"),
    "instruct": ("corpus", "index"), "sft": ("tokenizer", "pretrain", "instruct", "index"), "dpo": ("sft",),
    "eval": ("corpus", "index", "tokenizer", "pretrain", "sft", "dpo"),
    "chat": ("index", "tokenizer", "pretrain", "sft", "dpo"),
}
"""What each stage is built from (its inputs' stages): a stage rebuilt makes every stage depending on it stale."""
NOT_OUTPUT = frozenset({"tensorboard", "log_every", "keep_checkpoints", "checkpoint_every_steps",
                        "checkpoint_every_minutes", "workers", "rebuild"})
"""Settings that change how a stage reports or checkpoints, not what it builds: changing them leaves it fresh."""
USES_MODEL = ("tokenizer", "pretrain", "sft", "dpo", "eval", "chat")
"""Stages whose output depends on the recipe's base model (each records it in BASE_MODEL_FILE when it finishes)."""
BASE_MODEL_FILE = "base_model.json"


@dataclass
class ChatSampleConfig:
    """The sample answers that close the report."""

    questions: list[str] = field(default_factory=lambda: [
        "《黄帝内经》中“阴阳者，天地之道也”是什么意思？",
        "桂枝汤由哪些药物组成？",
        "请用白话解释“上工治未病”。",
    ])
    """Questions put to the final model."""
    max_new_tokens: int = 96
    """Tokens generated per answer."""
    retrieval: bool = True
    """Ask with retrieval over the run's index and show the citations (as `qihuang chat` does)."""

    def __post_init__(self) -> None:
        check_ranges("chat", self, max_new_tokens=(1, None, False))


@dataclass
class Recipe:
    """A whole run: the base model and one config per stage."""

    name: str = "demo"
    """Run name: everything goes into <runs_dir>/<name>/."""
    model: str = DEFAULT_MODEL
    """Base model: a preset (smollm2-135m, gemma3-270m, tiny-llama), an HF model directory or a .gguf file."""
    runs_dir: Path = Path("runs")
    """Folder that holds the runs."""
    seed: int = 0
    """Random seed for every stage."""
    threads: int | None = None
    """CPU threads for torch (default: all cores)."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages to run, in pipeline order (a subset of corpus, index, tokenizer, pretrain, instruct, sft, dpo, eval, chat)."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Corpus stage."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Retrieval-index stage (the library's BM25 index, built once for serving)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Vocabulary-extension stage."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Continual-pretraining stage."""
    instruct: InstructConfig = field(default_factory=InstructConfig)
    """Instruction-data stage."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning stage."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """Preference-tuning stage."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation stage."""
    chat: ChatSampleConfig = field(default_factory=ChatSampleConfig)
    """Sample answers at the end."""
    stage_processes: bool = True
    """Run each stage in a process of its own (spawned; a few seconds of imports each), so that the run's peak
    memory is its largest stage's rather than what one long process accumulates. Off, or under a distributed
    launch: every stage in this process."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", "..") or "\0" in self.name:
            raise ConfigError(f"name: must be a plain folder name, got {self.name!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe before any work starts (unknown keys / wrong types name the key and the file)."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    seeded = [k for k, v in data.items() if isinstance(v, dict) and "seed" in v] if isinstance(data, dict) else []
    if seeded:  # _stage_config gives every stage the recipe's seed: a stage's own would be ignored without a word
        raise ConfigError(f"{path}: {', '.join(f'{k}.seed' for k in seeded)}: a recipe has one seed for every stage; "
                          "set `seed:` at the top level (--set seed=N)")
    return from_mapping(Recipe, data, where=str(path))


def _set_threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def _chat_samples(cfg: ChatSampleConfig, model_dir: Path, index_spec: Path, out: StageDir) -> dict[str, Any]:
    """Each question asked in a fresh `qihuang chat` session (retrieval over the run's index, citations)."""
    from qihuang.retrieval import PassageIndex
    from qihuang.serve.chat import ChatSession
    from qihuang.serve.engine import Engine
    from qihuang.serve.settings import ChatConfig

    engine = Engine.load(model_dir)
    index = PassageIndex.open(index_spec) if cfg.retrieval else None
    chat_cfg = ChatConfig(model=str(model_dir), max_tokens=cfg.max_new_tokens, cite=cfg.retrieval)
    samples = []
    for q in cfg.questions:
        t0 = time.time()
        answer, cites = ChatSession(engine, index, chat_cfg).ask(q, lambda _text: None)
        samples.append({"question": q, "answer": answer, "seconds": round(time.time() - t0, 2),
                        "citations": [{k: c[k] for k in ("index", "title", "quote", "cited")} for c in cites]})
    write_json(out.path / "samples.json", samples)
    return {"model": str(model_dir), "retrieval": cfg.retrieval, "samples": samples}


def stale_reason(name: str, stage: StageDir, cfg: Any, rebuilt: list[str], force: list[str],
                 model: str, active: list[str]) -> str | None:
    """Why finished stage `name` must be rebuilt (None: reuse it): forced, its config changed since it was built,
    a stage it depends on was rebuilt (in this run, or later than it in an earlier one), or it was built from
    another base model than `model` (as the stage recorded it)."""
    if not stage.is_done():
        return None
    if name in force:
        return "forced"
    ups = [u for u in DEPENDS[name] if u in rebuilt]
    if ups:
        return f"{', '.join(ups)} rebuilt"
    built_from = _built_from(stage) if name in USES_MODEL else None
    if built_from is not None and built_from != model:
        return f"base model changed ({built_from} → {model})"
    changed = changed_fields(stage, cfg, NOT_OUTPUT)
    if changed:
        return "config changed: " + ", ".join(changed[:6]) + (" …" if len(changed) > 6 else "")
    done_at = stage.done_file.stat().st_mtime
    newer = [u for u in DEPENDS[name] if u in active and (stage.path.parent / u / "done").exists()
             and (stage.path.parent / u / "done").stat().st_mtime > done_at]
    return f"{', '.join(newer)} newer" if newer else None


def _built_from(stage: StageDir) -> str | None:
    """The base model a finished stage recorded (None: not recorded, e.g. a stage built before it was)."""
    import json

    try:
        return str(json.loads((stage.path / BASE_MODEL_FILE).read_text(encoding="utf-8"))["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class StageInputs:
    """What a stage is built from besides its config: the run folder, the latest model so far, the models by label."""

    run_dir: Path
    current: Path
    models: dict[str, Path]

    def dir(self, stage: str) -> StageDir:
        return stage_dir(self.run_dir, stage)

    @property
    def corpus(self) -> Path:
        return self.dir("corpus").path


_WORK: dict[str, Callable[[Any, StageInputs], dict[str, Any]]] = {
    "corpus": lambda c, at: build_corpus(c, at.dir("corpus")),
    "index": lambda c, at: build_index(c, at.corpus, at.dir("index")),
    "tokenizer": lambda c, at: extend_tokenizer(c, at.current, at.corpus / "train.jsonl",
                                                at.corpus / "heldout.jsonl", at.dir("tokenizer")),
    "pretrain": lambda c, at: pretrain(c, at.current, at.corpus / "train.jsonl", at.corpus / "heldout.jsonl",
                                       at.dir("pretrain")),
    "instruct": lambda c, at: build_instructions(c, at.corpus / "train.jsonl", at.dir("instruct")),
    "sft": lambda c, at: sft(c, at.current, at.dir("sft")),
    "dpo": lambda c, at: dpo(c, at.current, at.dir("dpo")),
    "eval": lambda c, at: evaluate_models(c, dict(at.models), at.corpus / "heldout.jsonl", None,  # held-out *books*
                                          at.dir("eval"), index=at.run_dir),
    "chat": lambda c, at: _chat_samples(c, at.current, at.run_dir, at.dir("chat")),
}
"""Each stage's work, from its config and inputs."""


def run_one_stage(name: str, cfg: Any, inputs: StageInputs, force: bool, threads: int | None) -> dict[str, Any]:
    """Stage `name` into its folder (`runs.run_stage`); module-level so that a spawned process can run it."""
    _set_threads(threads)
    return run_stage(inputs.dir(name), cfg, lambda: _WORK[name](cfg, inputs), force=force)


def _stage_config(recipe: Recipe, name: str, dirs: dict[str, StageDir]) -> Any:
    """The recipe's config of stage `name` with the run's seed, and SFT's data defaulting to the instruct stage's."""
    cfg = getattr(recipe, name)
    if dataclasses.is_dataclass(cfg) and "seed" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, seed=recipe.seed)
    if name == "sft" and not cfg.data:
        cfg = dataclasses.replace(cfg, data=[dirs["instruct"].path / "train.jsonl"])
        if (dirs["instruct"].path / "heldout_qa.jsonl").exists():
            cfg = dataclasses.replace(cfg, eval_data=dirs["instruct"].path / "heldout_qa.jsonl")
    return cfg


def run_recipe(recipe: Recipe, force: list[str] | None = None, log: Callable[[str], None] = print,
               only: list[str] | None = None) -> Path:
    """Run every stage of `recipe` in order and write report.md; returns the run dir. A finished stage is reused
    unless it is stale (`stale_reason`): then it and every stage built from it rerun, and the log says why.
    `only`: rerun just these stages; the recipe's other stages are not run, their finished outputs (models
    included: chat after `--only chat` asks the run's final model, not the base) are used as they are."""
    unknown = [s for s in only or [] if s not in recipe.stages]
    if unknown:
        raise ConfigError(f"--only {unknown}: not a stage of this recipe ({', '.join(recipe.stages)})")
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "recipe.json", recipe)
    force = force or []
    base_dir = prepare_model(recipe.model)
    dirs = {s: stage_dir(run_dir, s) for s in STAGES}
    summaries: dict[str, dict[str, Any]] = {}
    rebuilt: list[str] = []
    inputs = StageInputs(run_dir, current=base_dir, models={"base": base_dir})
    isolate = recipe.stage_processes and not under_distributed_launch()
    for name in STAGES:
        if name not in recipe.stages:
            continue
        cfg = _stage_config(recipe, name, dirs)
        if only and name not in only:
            log(f"── stage {name} " + ("(done, kept: --only)" if dirs[name].is_done() else "(not run: --only)"))
            why, reuse = None, True
        else:
            why = "--only" if only else stale_reason(name, dirs[name], cfg, rebuilt, force, str(recipe.model),
                                                      list(recipe.stages))
            reuse = dirs[name].is_done() and why is None
            log(f"── stage {name} " + ("(done, skipped)" if reuse else f"(stale: {why}; rerunning) …" if why else "…"))
        if reuse:
            summaries[name] = {**dirs[name].summary(), "skipped": True}
        elif isolate:
            summaries[name] = run_in_process(name, run_one_stage, name, cfg, inputs, why is not None, recipe.threads)
        else:
            summaries[name] = run_one_stage(name, cfg, inputs, why is not None, recipe.threads)
        if not reuse:
            rebuilt.append(name)
            if name in USES_MODEL:  # recorded per stage: an interrupted run cannot hide what a stage was built from
                write_json(dirs[name].path / BASE_MODEL_FILE, {"model": str(recipe.model)})
        log(f"   {name}: {summaries[name].get('wall_seconds', 0):.1f}s")
        produced = dirs[name].path / "model"
        if (produced / "config.json").exists() and dirs[name].is_done():
            inputs.current = produced
            label = {"tokenizer": None, "pretrain": "cpt", "sft": "sft", "dpo": "dpo"}.get(name)
            if label:
                inputs.models[label] = produced
    report = write_report(recipe, summaries, dirs)
    log(f"report: {report}")
    return run_dir


def write_report(recipe: Recipe, summaries: dict[str, dict[str, Any]], dirs: dict[str, StageDir]) -> Path:
    """`report.md`: stage wall times, the evaluation table (base vs CPT vs SFT vs DPO), sample answers."""
    lines = [f"# qihuang run `{recipe.name}`", "", f"Base model: `{recipe.model}`", ""]
    lines += ["## Stages", "", "| stage | wall time (s) | peak memory (MB) | status |", "|---|---|---|---|"]
    for name in STAGES:
        s = summaries.get(name) or dirs[name].summary()
        if not s:
            continue
        status = "reused" if s.get("skipped") else "ran"
        rss = s.get("process_peak_rss_mb")
        lines.append(f"| {name} | {s.get('wall_seconds', 0):.1f} | {'–' if rss is None or s.get('skipped') else rss} "
                     f"| {status} |")
    lines += ["", "Peak memory: the resident peak of " + ("each stage's own process (`stage_processes`)."
                                                         if recipe.stage_processes and not under_distributed_launch()
                                                         else
                                                         "the run's one process up to the end of the stage.")]
    tok = summaries.get("tokenizer") or dirs["tokenizer"].summary()
    if tok.get("tokens_per_char_before") is not None:
        lines += ["", f"Tokens per character on held-out books: {tok['tokens_per_char_before']:.3f} → "
                  f"{tok.get('tokens_per_char_after', float('nan')):.3f} ({tok.get('added', 0)} tokens added)."]
    eval_md = dirs["eval"].path / "report.md"
    if eval_md.exists():
        lines += ["", "## Evaluation", "", eval_md.read_text(encoding="utf-8").strip()]
    chat = summaries.get("chat") or dirs["chat"].summary()
    if chat.get("samples"):
        lines += ["", "## Sample answers", "", f"Model: `{chat.get('model')}`", ""]
        for s in chat["samples"]:
            lines += [f"**问：** {s['question']}", "", f"**答：** {s['answer'].strip()}", ""]
            for c in s.get("citations", []):
                lines.append(f"- {'**' if c['cited'] else ''}[{c['index']}] {c['title']}{'**' if c['cited'] else ''}"
                             f"：{c['quote']}")
            lines += [""] if s.get("citations") else []
    lines += ["", "## Recipe", "", "```yaml", _yaml(to_mapping(recipe)), "```", ""]
    path = recipe.run_dir / "report.md"
    with atomic_open(path) as fh:
        fh.write("\n".join(lines))
    return path


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).strip()
