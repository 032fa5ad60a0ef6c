"""Shared test fixtures: one CPU thread (the suite shares 2 cores), tiny models, the development data folder."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from qihuang.config import shared_dir  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A prepared random tiny LLaMA (SmolLM2 tokenizer and chat template), cached under QIHUANG_HOME."""
    from qihuang.models import prepare_model

    return prepare_model("tiny-llama")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (development data beside the checkout); tests that need it skip without it."""
    root = shared_dir()
    if root is None:
        pytest.skip("../shared/data not present")
    return root / "data"
