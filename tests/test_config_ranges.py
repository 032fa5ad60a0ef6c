"""Regression tests of issue #16: numbers in every stage's config are range-checked at load (defect 13) and
recipe names cannot leave runs_dir (defect 14)."""

from __future__ import annotations

from typing import Any

import pytest

from qihuang.config import ConfigError


@pytest.mark.parametrize("field, value", [("log_every", 0), ("keep_checkpoints", 0), ("threads", -1),
                                          ("weight_decay", -1.0), ("rollback_lr_factor", -2.0),
                                          ("rollback_lr_factor", 0.0), ("clip", float("nan")),
                                          ("spike_max_in_row", 0), ("checkpoint_every_steps", -1)])
def test_pretrain_numbers_are_validated(field: str, value: Any) -> None:
    # defect 13: log_every 0 → ZeroDivisionError after step 1; keep_checkpoints 0 deleted every checkpoint
    from qihuang.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match=f"pretrain.{field}"):
        PretrainConfig(**{field: value})


@pytest.mark.parametrize("cls, stage, field, value", [
    ("qihuang.finetune.sft:SFTConfig", "sft", "learning_rate", -1.0),
    ("qihuang.finetune.sft:SFTConfig", "sft", "warmup", 2.0),
    ("qihuang.finetune.preference:DPOConfig", "dpo", "learning_rate", 0.0),
    ("qihuang.finetune.preference:DPOConfig", "dpo", "save_steps", 0),
])
def test_other_stages_numbers_are_validated(cls: str, stage: str, field: str, value: Any) -> None:
    import importlib

    mod, name = cls.split(":")
    with pytest.raises(ConfigError, match=f"{stage}.{field}"):
        getattr(importlib.import_module(mod), name)(**{field: value})


NAN = float("nan")


@pytest.mark.parametrize("cls, stage, field, value", [
    ("qihuang.finetune.preference:DPOConfig", "dpo", "beta", NAN),
    ("qihuang.finetune.preference:DPOConfig", "dpo", "heldout_fraction", 0.5),
    ("qihuang.finetune.preference:DPOConfig", "dpo", "epochs", NAN),
    ("qihuang.pretrain:PretrainConfig", "pretrain", "max_minutes", NAN),
    ("qihuang.pretrain:PretrainConfig", "pretrain", "embed_lr_mult", NAN),
    ("qihuang.pretrain:PretrainConfig", "pretrain", "general_ratio", 1.0),
    ("qihuang.pretrain:PretrainConfig", "pretrain", "min_lr_ratio", NAN),
    ("qihuang.pretrain:PretrainConfig", "pretrain", "grad_checkpoint", NAN),
    ("qihuang.finetune.sft:SFTConfig", "sft", "max_minutes", NAN),
    ("qihuang.finetune.sft:SFTConfig", "sft", "lora_dropout", 1.0),
    ("qihuang.finetune.sft:SFTConfig", "sft", "val_fraction", NAN),
    ("qihuang.finetune.sft:SFTConfig", "sft", "epochs", 0.0),
    ("qihuang.decoding:DecodeParams", "decoding", "repetition_penalty", NAN),
    ("qihuang.decoding:DecodeParams", "decoding", "repetition_penalty", 2.5),
    ("qihuang.decoding:DecodeParams", "decoding", "no_repeat_ngram_size", -1),
    ("qihuang.decoding:DecodeParams", "decoding", "no_repeat_ngram_size", 1),
])
def test_nan_and_open_bounds_are_refused(cls: str, stage: str, field: str, value: Any) -> None:
    """Every single-field bound is in the check_ranges table, which refuses NaN (the hand-written ones let it by)."""
    import importlib

    mod, name = cls.split(":")
    with pytest.raises(ConfigError, match=f"{stage}.{field}"):
        getattr(importlib.import_module(mod), name)(**{field: value})


def test_defaults_still_load() -> None:
    from qihuang.finetune.preference import DPOConfig
    from qihuang.finetune.sft import SFTConfig
    from qihuang.pretrain import PretrainConfig

    PretrainConfig(), SFTConfig(), DPOConfig()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "", "x\0y"])
def test_recipe_name_cannot_leave_runs_dir(name: str) -> None:
    # defect 14: name '..' wrote corpus/, recipe.json and report.md into the parent of runs_dir
    from qihuang.pipeline import Recipe

    with pytest.raises(ConfigError, match="name"):
        Recipe(name=name)


@pytest.mark.parametrize("cls, stage, field, value", [
    ("qihuang.tokenizer:TokenizerConfig", "tokenizer", "min_word_count", 0),
    ("qihuang.tokenizer:TokenizerConfig", "tokenizer", "max_corpus_chars", 0),
    ("qihuang.tokenizer:TokenizerConfig", "tokenizer", "heldout_chars", -5),
    ("qihuang.evaluate:EvalConfig", "", "passages_k", 11),  # serve's RetrievalConfig checks them for eval
    ("qihuang.evaluate:EvalConfig", "", "passage_chars", 5),
    ("qihuang.serve.settings:ServeConfig", "serve", "threads", -1),
    ("qihuang.serve.settings:ServeConfig", "serve", "queue_timeout_s", 0.0),
    ("qihuang.serve.settings:ServeConfig", "serve", "shutdown_grace_s", NAN),
    ("qihuang.serve.settings:ChatConfig", "chat", "threads", -2),
    ("qihuang.pipeline:ChatSampleConfig", "chat", "max_new_tokens", 0),
])
def test_remaining_stages_numbers_are_validated(cls: str, stage: str, field: str, value: Any) -> None:
    import importlib

    mod, name = cls.split(":")
    with pytest.raises(ConfigError, match=f"{stage}.{field}" if stage else field):
        getattr(importlib.import_module(mod), name)(**{field: value})


def test_serve_work_bound_must_allow_max_tokens() -> None:
    from qihuang.serve.settings import ServeConfig

    with pytest.raises(ConfigError, match="max_request_work"):
        ServeConfig(max_tokens=512, max_request_work=100)
