"""Map a stage's config dataclass onto click options: one `--flag` per field (help = the field's docstring),
plus `--config FILE.yaml`; flags override the file. Errors name the flag or the file and key."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import click

from qihuang.config import RENAMED, ConfigError, field_docs, from_mapping, load_yaml


def _click_type(tp: Any) -> tuple[Any, bool]:
    """(click type, multiple) for a field annotation."""
    origin = get_origin(tp)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in get_args(tp) if a is not type(None)]
        return _click_type(args[0]) if len(args) == 1 else (str, False)
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(tp)]), False
    if origin in (list, tuple):
        inner, _ = _click_type((get_args(tp) or (str,))[0])
        return inner, True
    if tp is bool:
        return bool, False
    if tp in (int, float, str):
        return tp, False
    if tp is Path:
        return click.Path(path_type=Path), False
    return str, False


def config_options(cls: type, prefix: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add `--config` and one option per field of `cls`; the command receives `cfg: cls`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not dataclasses.is_dataclass(hints[f.name])]
    names = {f.name for f in fields}
    renamed = {old: new for old, new in RENAMED.items() if new in names and old not in names}

    def flag(name: str) -> str:
        return f"--{prefix}{name}".replace("_", "-")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renamed.items():  # an earlier version's flag: name the one to use
                if kwargs.pop(f"renamed_{prefix}{old}", None) is not None:
                    raise click.UsageError(f"{flag(old)} is now {flag(new)} (the same name in every stage)")
            config_file = kwargs.pop("config_file", None)
            data: dict[str, Any] = load_yaml(config_file) if config_file else {}
            for f in fields:
                value = kwargs.pop(f"{prefix}{f.name}", None)
                if value is None or value == ():
                    continue
                data[f.name] = list(value) if isinstance(value, tuple) else value
            try:
                cfg = from_mapping(cls, data, where=str(config_file) if config_file else "flags")
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from exc
            return fn(*args, cfg=cfg, **kwargs)

        for f in reversed(fields):
            ctype, multiple = _click_type(hints[f.name])
            name = f"--{prefix}{f.name}".replace("_", "-")
            default = None
            if f.default is not dataclasses.MISSING:
                default = f.default
            help_text = docs.get(f.name, "")
            if default not in (None, ()) and not multiple:
                help_text += f"  [default: {default}]"
            if ctype is bool:
                opt = click.option(f"{name}/--no-{prefix}{f.name}".replace("_", "-"), f"{prefix}{f.name}",
                                   default=None, help=help_text)
            else:
                opt = click.option(name, f"{prefix}{f.name}", type=ctype, multiple=multiple, default=None,
                                   help=help_text)
            wrapper = opt(wrapper)
        for old in renamed:
            wrapper = click.option(flag(old), f"renamed_{prefix}{old}", default=None, hidden=True)(wrapper)
        wrapper = click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True),
                               default=None, help=f"YAML file with {cls.__name__} keys; flags override it")(wrapper)
        return wrapper

    return decorate


def model_passages_options(model_help: str, train_help: str, heldout_help: str) -> Callable[[Callable[..., Any]],
                                                                                            Callable[..., Any]]:
    """Decorator: `--model`, `--train`, `--heldout`, `--out`, `--force` for a stage that reads a model and
    passages (the command receives model_spec, train_path, heldout_path, out_path, force)."""
    options = [
        click.option("--model", "model_spec", default="smollm2-135m", show_default=True, help=model_help),
        click.option("--train", "train_path", type=click.Path(path_type=Path, exists=True), required=True,
                     help=train_help),
        click.option("--heldout", "heldout_path", type=click.Path(path_type=Path, exists=True), required=True,
                     help=heldout_help),
        click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
                     help="Stage folder to write"),
        click.option("--force", is_flag=True, help="Rerun even if the stage folder is marked done"),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


def run_stage_command(out_path: Path, cfg: Any, work: Callable[[Any], dict[str, Any]], force: bool,
                      hide: tuple[str, ...] = ()) -> None:
    """Run a stage from the CLI with the pipeline's semantics (config, `done`, resume) and print its summary."""
    import json

    from qihuang.runs import StageDir, run_stage

    out = StageDir(out_path)
    summary = run_stage(out, cfg, lambda: work(out), force=force)
    click.echo(json.dumps({k: v for k, v in summary.items() if k not in hide}, ensure_ascii=False, indent=1))
