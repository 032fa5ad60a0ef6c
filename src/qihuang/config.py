"""Typed configuration: dataclasses are the configs of the stages; YAML recipes and CLI flags map onto them.

`from_mapping` builds a (nested) dataclass from a plain mapping and rejects unknown keys and wrong types with an
error naming the key and the file before any work starts. `field_docs` reads the docstring under each field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or flag value is wrong; the message names the key and where it came from."""


Bound = tuple[float | None, float | None, bool] | tuple[float | None, float | None, bool, bool]
"""(low, high, low_exclusive[, high_exclusive]) of `check_ranges`; None = unbounded."""


def check_ranges(stage: str, obj: Any, **bounds: Bound) -> None:
    """Raise ConfigError naming `stage.field` when a numeric field is NaN or outside its bounds; each bound is
    (low, high, low_exclusive[, high_exclusive]), None meaning unbounded, high inclusive unless high_exclusive; a
    None field value is not checked."""
    for name, (lo, hi, lo_open, *rest) in bounds.items():
        hi_open = bool(rest and rest[0])
        v = getattr(obj, name)
        if v is None:
            continue
        ok = (v == v and (lo is None or (v > lo if lo_open else v >= lo))
              and (hi is None or (v < hi if hi_open else v <= hi)))
        if not ok:
            low = "-inf" if lo is None else f"{lo:g}"
            high = "inf" if hi is None else f"{hi:g}"
            close = ")" if hi is None or hi_open else "]"
            raise ConfigError(f"{stage}.{name}: must be in {'(' if lo_open or lo is None else '['}{low}, "
                              f"{high}{close}, got {v!r}")


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field (``x: int = 1`` followed by ``\"\"\"doc\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) `value` against the annotation `tp`; raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            return _coerce(value, real[0], where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_mapping(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, f"{where}.{k}"): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(os.path.expanduser(str(value)))
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


RENAMED: dict[str, str] = {"lr": "learning_rate", "micro_batch": "batch_size", "lora_rank": "lora_r"}
"""Settings of earlier versions (pretrain) under their name now: every stage uses the same one."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    **{old: (new,) for old, new in RENAMED.items()}, "per_device_train_batch_size": ("batch_size",),
    "gradient_accumulation_steps": ("grad_accum",), "num_train_epochs": ("epochs",), "warmup_steps": ("warmup",),
    "warmup_ratio": ("warmup",), "max_seq_length": ("max_length", "seq_len"), "seq_len": ("max_length",),
    "max_length": ("seq_len",),
}
"""The same setting under the names other stages, earlier versions (`RENAMED`) or Hugging Face
`TrainingArguments` give it."""


def suggest(key: str, names: set[str]) -> str:
    """"did you mean …" for an unknown key: this config's name for the same setting, else the closest spelling."""
    import difflib

    same = [n for n in SYNONYMS.get(key, ()) if n in names]
    close = same or difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.7)
    return f"{key!r}: did you mean {close[0]!r}?" if close else ""


def from_mapping(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types (errors name `where.key`)."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        hints_ = "; ".join(h for h in (suggest(k, names) for k in unknown) if h)
        raise ConfigError(f"{where}: unknown key(s) {unknown}{'; ' + hints_ if hints_ else ''}; "
                          f"known keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_mapping(obj: Any) -> Any:
    """A dataclass (or nested values) as plain JSON/YAML-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping holding a key twice (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {line}); YAML would keep only "
                                f"the last", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors naming the file (and a key given twice: both lines)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: Path, overrides: dict[str, Any] | None = None) -> T:
    """Build `cls` from a YAML file plus flag overrides; errors name the file and key."""
    data = load_yaml(path)
    data.update(overrides or {})
    return from_mapping(cls, data, where=str(path))


DATA_ROOT_ENV = "QIHUANG_DATA_ROOT"
"""The one environment variable for the data: the folder that holds classics/, eval/, general_sft/, lexicon/ and
preference/ (`../shared/data` beside a checkout, found without it)."""
LEGACY_ENV = {"QIHUANG_SHARED": "the folder above data/", "QIHUANG_DATA": "the classics/ folder"}
"""Variables of earlier versions, still honoured when QIHUANG_DATA_ROOT is unset (each with a warning once)."""
_warned: set[str] = set()


def legacy_env(name: str) -> str | None:
    """The value of an earlier version's variable (`LEGACY_ENV`) when QIHUANG_DATA_ROOT is unset, warning once."""
    value = os.environ.get(name)
    if not value or os.environ.get(DATA_ROOT_ENV):
        return None
    if name not in _warned:
        _warned.add(name)
        import warnings

        warnings.warn(f"${name} ({LEGACY_ENV[name]}) is deprecated: set {DATA_ROOT_ENV} to the data folder "
                      "(the one holding classics/, eval/, lexicon/ …) instead", FutureWarning, stacklevel=3)
    return value


def shared_dir() -> Path | None:
    """The `shared/` folder beside the checkout (development data), if present."""
    legacy = legacy_env("QIHUANG_SHARED")
    if legacy:
        return Path(legacy)
    for base in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[3]):
        cand = base.parent / "shared"
        if (cand / "data").is_dir():
            return cand
        cand = base / "shared"
        if (cand / "data").is_dir():
            return cand
    return None


def data_root() -> Path | None:
    """The data folder: $QIHUANG_DATA_ROOT, else `../shared/data` beside the checkout (None: neither)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    shared = shared_dir()
    return shared / "data" if shared is not None else None


def data_file(relative: str) -> Path:
    """Resolve a file of the data folder (`data_root()/<relative>`), with a clear error if absent."""
    root = data_root()
    if root is not None and (root / relative).exists():
        return root / relative
    looked = str(root / relative) if root is not None else f"no data folder (${DATA_ROOT_ENV} unset, no ../shared/data)"
    raise ConfigError(f"data file {relative!r} not found (looked in: {looked}); set {DATA_ROOT_ENV} to the folder "
                      "that holds it or pass an explicit path")


def qihuang_home() -> Path:
    """Cache directory for prepared models and indexes (`QIHUANG_HOME`, default ~/.cache/qihuang)."""
    return Path(os.environ.get("QIHUANG_HOME", Path.home() / ".cache" / "qihuang"))
