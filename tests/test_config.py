"""Strict recipe/config loading: unknown keys and wrong types are named with their file before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from qihuang.config import ConfigError, field_docs, from_mapping, load_config, to_mapping


@dataclass
class Inner:
    """Inner config."""

    rate: float = 0.1
    """A rate."""
    mode: Literal["a", "b"] = "a"
    """A mode."""


@dataclass
class Outer:
    """Outer config."""

    name: str = "x"
    """The name."""
    steps: int = 3
    """How many steps."""
    files: list[Path] = field(default_factory=list)
    """Some files."""
    limit: int | None = None
    """Optional limit."""
    inner: Inner = field(default_factory=Inner)
    """Nested."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps: must be >= 0")


def test_builds_nested_and_coerces() -> None:
    cfg = from_mapping(Outer, {"steps": "5", "files": ["a.txt"], "inner": {"rate": 1, "mode": "b"}})
    assert cfg.steps == 5 and cfg.files == [Path("a.txt")] and cfg.inner.rate == 1.0 and cfg.inner.mode == "b"
    assert to_mapping(cfg)["files"] == ["a.txt"]


def test_unknown_key_is_named_with_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: y\ninner:\n  rat: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"r\.yaml\.inner: unknown key\(s\) \['rat'\]"):
        load_config(Outer, p)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "many"}, "config.steps: expected an integer"),
        ({"steps": True}, "config.steps: expected an integer"),
        ({"files": "a.txt"}, "config.files: expected a list"),
        ({"inner": {"mode": "c"}}, r"config.inner.mode: must be one of \['a', 'b'\]"),
        ({"inner": 3}, "config.inner: expected a mapping"),
        ({"steps": -1}, "steps: must be >= 0"),
    ],
)
def test_wrong_types_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(Outer, data)


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Outer, p)
    p.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, p)
    # a key given twice (the later line silently won in plain YAML) names the key and both lines
    p.write_text("steps: 3\ninner:\n  mode: a\n  mode: b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*key 'mode' appears twice \(lines 3 and 4\)"):
        load_config(Outer, p)


def test_field_docs_are_read() -> None:
    assert field_docs(Outer)["steps"] == "How many steps."
    assert field_docs(Inner)["mode"] == "A mode."


def test_shipped_recipes_load() -> None:
    """Every YAML under recipes/ is a valid recipe or eval config (typos in a shipped file fail here, not in a
    user's run); the eval tables name only files that exist under the data root when it is present."""
    from qihuang.config import data_file, load_config
    from qihuang.evaluate import EvalConfig
    from qihuang.pipeline import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("demo.yaml", "tiny.yaml"):
        recipe = load_recipe(root / name)
        assert recipe.name == name.removesuffix(".yaml")
    cfg = load_config(EvalConfig, root / "eval_full.yaml")
    assert cfg.mcq_formulation == "cf" and len(cfg.mcq_files) > 60
    try:
        for spec in cfg.mcq_files + cfg.qa_files:
            path = spec.rsplit(":", 1)[0] if spec.rsplit(":", 1)[-1].isdigit() else spec
            assert data_file(path).is_file()
    except ConfigError as exc:  # no shared data on this machine
        pytest.skip(str(exc))


@pytest.mark.parametrize("cls, key, hint", [
    ("qihuang.pretrain:PretrainConfig", "lr", "did you mean 'learning_rate'"),
    ("qihuang.pretrain:PretrainConfig", "micro_batch", "did you mean 'batch_size'"),
    ("qihuang.pretrain:PretrainConfig", "lora_rank", "did you mean 'lora_r'"),
    ("qihuang.finetune.preference:DPOConfig", "lr", "did you mean 'learning_rate'"),
    ("qihuang.finetune.sft:SFTConfig", "lr", "did you mean 'learning_rate'"),
    ("qihuang.finetune.sft:SFTConfig", "lora_rank", "did you mean 'lora_r'"),
    ("qihuang.finetune.sft:SFTConfig", "per_device_train_batch_size", "did you mean 'batch_size'"),
    ("qihuang.finetune.sft:SFTConfig", "max_minuts", "did you mean 'max_minutes'"),
])
def test_an_unknown_key_gets_a_suggestion(cls: str, key: str, hint: str) -> None:
    import importlib

    from qihuang.config import from_mapping

    mod, name = cls.split(":")
    with pytest.raises(ConfigError, match=hint):
        from_mapping(getattr(importlib.import_module(mod), name), {key: 1}, where="r.yaml.stage")


@pytest.mark.parametrize("old, new", [("lr", "learning_rate"), ("micro_batch", "batch_size"), ("lora_rank", "lora_r")])
def test_a_recipe_with_an_earlier_pretrain_name_is_told_the_name_now(tmp_path: Path, old: str, new: str) -> None:
    """pretrain's lr / micro_batch / lora_rank are named as in the SFT and DPO stages now: an old recipe stops with
    the file, the key and the name to use."""
    from qihuang.finetune.preference import DPOConfig
    from qihuang.finetune.sft import SFTConfig
    from qihuang.pipeline import load_recipe
    from qihuang.pretrain import PretrainConfig

    for cls in (PretrainConfig, SFTConfig, DPOConfig):
        assert new in cls.__dataclass_fields__ and old not in cls.__dataclass_fields__, cls
    p = tmp_path / "old.yaml"
    p.write_text(f"name: old\nmodel: tiny-llama\npretrain: {{{old}: 2}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert f"{p}.pretrain: unknown key(s) ['{old}']" in msg and f"'{old}': did you mean '{new}'?" in msg, msg


def test_a_stage_seed_is_refused_not_ignored(tmp_path: Path) -> None:
    """Every stage runs with the recipe's seed (`pipeline._stage_config`), so `--set sft.seed=1` would train with seed
    0 and say nothing: it stops with the key and where the seed is set instead."""
    from qihuang.pipeline import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: r\nmodel: tiny-llama\nsft: {max_steps: 2}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"r\.yaml: sft\.seed: a recipe has one seed .*--set seed=N"):
        load_recipe(p, {"sft.seed": 1})
    assert load_recipe(p, {"seed": 1}).seed == 1 and load_recipe(p).sft.max_steps == 2


def test_a_key_far_from_every_name_gets_no_guess() -> None:
    from qihuang.config import from_mapping
    from qihuang.finetune.sft import SFTConfig

    with pytest.raises(ConfigError) as exc:
        from_mapping(SFTConfig, {"zzzz": 1})
    assert "did you mean" not in str(exc.value)
