"""The `qihuang` command: `run` chains the stages; each stage is also a command of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qihuang.config import ConfigError
from qihuang.corpus.cli import corpus_cli
from qihuang.evaluate.cli import eval_cli
from qihuang.finetune.preference import dpo_cli
from qihuang.finetune.sft import sft_cli
from qihuang.index import index_cli
from qihuang.instruct.cli import instruct_cli
from qihuang.merge import export_cli, merge_cli
from qihuang.models import ModelError
from qihuang.pretrain import pretrain_cli
from qihuang.serve.cli import chat_cli, search_cli, serve_cli
from qihuang.tokenizer import tokenizer_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="qihuang")
def cli() -> None:
    """岐黄 qihuang: corpus → index → tokenizer → pretrain → instruct → sft → dpo → eval → serve for the Chinese
    medical classics. `qihuang run recipes/demo.yaml` runs them all."""


@cli.command("run")
@click.argument("recipe", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set pretrain.max_minutes=2 (YAML-typed value).")
@click.option("--force", multiple=True, metavar="STAGE", help="Rerun this stage, and every stage built from it, even if done.")
@click.option("--only", multiple=True, metavar="STAGE",
              help="Rerun just this stage; the others are not run, their finished outputs (models too) are used.")
@click.option("--dry-run", is_flag=True, help="Resolve and check every stage's config, model and data files; train nothing.")
def run_cmd(recipe: Path, overrides: tuple[str, ...], force: tuple[str, ...], only: tuple[str, ...],
            dry_run: bool) -> None:
    """Run a recipe end to end into runs/<name>/ (finished stages are skipped, unfinished ones resume)."""
    import yaml

    from qihuang.pipeline import load_recipe, run_recipe

    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise click.UsageError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(value)
    try:
        r = load_recipe(recipe, parsed)
        if dry_run:
            from qihuang.recipe_check import check_recipe

            click.echo("\n".join(check_recipe(r)))
            return
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        run_recipe(r, force=list(force), log=click.echo, only=list(only))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


@cli.group("models")
def models_cli() -> None:
    """Base models: list presets, prepare (convert + cache) one."""


@models_cli.command("list")
def models_list() -> None:
    """List model presets and whether they are installed/prepared."""
    from qihuang.models import list_models

    for row in list_models():
        click.echo(f"{row['name']:<14} {row['state']:<22} {row['description']}")


@models_cli.command("prepare")
@click.argument("name", default="smollm2-135m")
def models_prepare(name: str) -> None:
    """Convert NAME (preset, HF dir or .gguf) once into the cache and print its directory."""
    import time

    from qihuang.models import load_model, prepare_model

    t0 = time.time()
    path = prepare_model(name)
    t1 = time.time()
    load_model(str(path))
    click.echo(f"{path}\nprepared in {t1 - t0:.1f}s; loads in {time.time() - t1:.2f}s")


for command in (corpus_cli, index_cli, tokenizer_cli, pretrain_cli, instruct_cli, sft_cli, dpo_cli, merge_cli,
                export_cli, eval_cli, serve_cli, chat_cli, search_cli):
    cli.add_command(command)


def main() -> None:
    """Console entry point: clear one-line errors for the failures users cause."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, ModelError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
