"""`qihuang instruct ...` commands: generate, refine, card, and build (all three as one stage run)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError
from qihuang.instruct.settings import InstructConfig

_passages = click.option("--passages", type=click.Path(path_type=Path), required=True,
                         help="Corpus passages JSONL (runs/<name>/corpus/train.jsonl).")
_out = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/dev/instruct"),
                    show_default=True, help="Stage folder for the outputs.")


def _echo(data: dict) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.group("instruct")
def instruct_cli() -> None:
    """Instruction data: generate (teacher or offline), refine, card."""


@instruct_cli.command("generate")
@_passages
@_out
@config_options(InstructConfig)
def generate_cmd(passages: Path, out_dir: Path, cfg: InstructConfig) -> None:
    """Generate candidate pairs (offline generators; the teacher too when --teacher-url is set)."""
    from qihuang.instruct.build import generate_step
    from qihuang.instruct.records import load_passages
    from qihuang.runs import StageDir

    out = StageDir(out_dir)
    log = out.metrics()
    try:
        _echo(generate_step(cfg, load_passages(passages, cfg.max_passages), out.path, log))
    except (ConfigError, OSError, RuntimeError) as exc:
        _fail(exc)
    finally:
        log.close()


@instruct_cli.command("refine")
@_passages
@_out
@config_options(InstructConfig)
def refine_cmd(passages: Path, out_dir: Path, cfg: InstructConfig) -> None:
    """Refine generated.jsonl: filters, grounding, dedup, hold-out, balancing, dialogues, general mix."""
    from qihuang.instruct.build import refine_step, training_index
    from qihuang.instruct.records import load_passages
    from qihuang.runs import StageDir

    out = StageDir(out_dir)
    log = out.metrics()
    try:
        _echo(refine_step(cfg, load_passages(passages, cfg.max_passages), out.path, log,
                          training_index(cfg, Path(passages))))
    except (ConfigError, OSError) as exc:
        _fail(exc)
    finally:
        log.close()


@instruct_cli.command("card")
@_out
def card_cmd(out_dir: Path) -> None:
    """Write card.md / card.json / card.png from the stage folder's train, held-out and rejects files."""
    from qihuang.instruct.card import write_card

    stats = write_card(out_dir)
    click.echo((out_dir / "card.md").read_text(encoding="utf-8"))
    click.echo(f"card: {out_dir / 'card.md'}, {out_dir / 'card.png'} ({stats['dialogues']} dialogues)")


@instruct_cli.command("build")
@_passages
@_out
@click.option("--force", is_flag=True, help="Rebuild even if the stage is done.")
@config_options(InstructConfig)
def build_cmd(passages: Path, out_dir: Path, force: bool, cfg: InstructConfig) -> None:
    """generate + refine + card as one stage run (config.json, summary.json, done marker)."""
    from qihuang.instruct.build import build_instructions
    from qihuang.runs import StageDir, run_stage

    out = StageDir(out_dir)
    try:
        summary = run_stage(out, cfg, lambda: build_instructions(cfg, passages, out), force=force)
    except (ConfigError, OSError, RuntimeError) as exc:
        _fail(exc)
    _echo({k: summary.get(k) for k in ("passages", "dialogues", "pairs_in_train", "general_records", "heldout_qa",
                                       "rejects", "by_task_type", "grounding_mean", "wall_seconds", "skipped")})
