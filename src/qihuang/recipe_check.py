"""`qihuang run RECIPE --dry-run`: what a recipe would do, checked without training — every stage's resolved config,
where its model comes from, the data files it names, and where each training stage would run on this machine (a GPU
recipe checks on a CPU box: the device it needs is reported, not refused)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from qihuang.config import ConfigError, data_root, to_mapping

DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".parquet", ".tsv", ".yaml", ".yml", ".jinja")
"""A string or path setting ending in one of these names a file the stage will read."""
TRAINING_STAGES = ("pretrain", "sft", "dpo")
"""Stages with `device` / `precision` fields."""


def describe_model(spec: str) -> str:
    """Where a model spec comes from, without downloading or converting anything; ConfigError when it cannot be
    any kind of model."""
    from qihuang.models import HUB_ID, PRESETS, TINY, adapter_base

    if spec == TINY or spec in PRESETS:
        return f"preset {spec}"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model: GGUF file {path} not found")
        return f"GGUF file {path}"
    if path.is_dir():
        if (path / "config.json").exists():
            return f"model folder {path}"
        base = adapter_base(path)
        if base is not None:
            return f"LoRA adapter {path} on {base}"
        raise ConfigError(f"model: {path} is a folder without config.json (nor a LoRA adapter)")
    if HUB_ID.fullmatch(spec):
        return f"Hugging Face model {spec} (its cache first; downloaded where the hub is reachable)"
    raise ConfigError(f"model: {spec!r} is no preset, folder, .gguf file or Hugging Face id (org/name)")


def named_files(cfg: Any) -> list[str]:
    """The file settings of a stage config (strings or paths ending in DATA_SUFFIXES, `file:N` limits allowed)."""
    found: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, (str, Path)):
            text = str(value)
            base = text.rsplit(":", 1)[0] if text.rsplit(":", 1)[-1].isdigit() else text
            if base.lower().endswith(DATA_SUFFIXES):
                found.append(base)

    for f in dataclasses.fields(cfg):
        visit(getattr(cfg, f.name))
    return found


def missing_files(cfg: Any) -> list[str]:
    """Named files that exist neither as given (absolute or relative to here) nor under the data root."""
    root = data_root()
    return [f for f in named_files(cfg)
            if not Path(f).expanduser().exists() and not (root is not None and (root / f).exists())]


def check_recipe(recipe: Any) -> list[str]:
    """Report lines for `recipe` (a `pipeline.Recipe`, already type-checked on load); raises ConfigError naming
    every problem found (model, missing files, impossible placements) at once."""
    from qihuang.placement import resolve

    lines = [f"recipe {recipe.name}: {len(recipe.stages)} stages into {recipe.run_dir}",
             f"model: {describe_model(str(recipe.model))}"]
    problems: list[str] = []
    for stage in recipe.stages:
        cfg = getattr(recipe, stage)
        settings = to_mapping(cfg)
        where = ""
        if stage in TRAINING_STAGES:
            try:
                p = resolve(cfg.device, cfg.precision, stage)
                where = f" — here: trains on {p.device} in {p.precision}"
            except ConfigError as exc:
                if cfg.device != "cuda":
                    problems.append(str(exc))
                where = f" — needs a GPU ({cfg.device}, {cfg.precision}); none visible here"
        lines.append(f"  {stage}{where}: {len(settings)} settings resolved")
        problems += [f"{stage}: file {f!r} not found (as given, or under the data root {data_root()})"
                     for f in missing_files(cfg)]
    if problems:
        raise ConfigError("; ".join(problems))
    lines.append("dry run: every stage's config resolved and checked; nothing was trained")
    return lines
