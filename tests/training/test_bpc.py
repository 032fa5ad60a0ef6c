"""Bits per character: equals a direct NLL computation and does not depend on windowing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from qihuang.training.bpc import bits_per_char, take_chars
from tests.training.helpers import invented_text


def test_take_chars() -> None:
    assert take_chars(["abc", "", "defg", "hi"], 5) == ["abc", "de"]
    assert take_chars(["abc"], None) == ["abc"]


def test_bpc_matches_direct_nll(tiny_model_dir: Path) -> None:
    from qihuang.models import load_model

    model, tok = load_model(tiny_model_dir)
    texts = [invented_text(4, 1), invented_text(3, 2)]
    r = bits_per_char(model, tok, texts, seq_len=512)
    nats = 0.0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            nats += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    chars = sum(len(t) for t in texts)
    assert r["chars"] == chars
    assert r["bpc"] == pytest.approx(nats / math.log(2) / chars, rel=1e-4)
    # short windows with overlap score every token exactly once; the figure stays close
    w = bits_per_char(model, tok, texts, seq_len=16, stride=8)
    assert w["tokens"] == r["tokens"] and w["bpc"] == pytest.approx(r["bpc"], rel=0.05)
    assert bits_per_char(model, tok, texts, max_chars=20)["chars"] == 20


def test_windows_score_every_token_once_whatever_the_stride() -> None:
    from qihuang.training.bpc import _windows

    ids = list(range(23))
    for seq_len in (2, 3, 6, 8, 30):
        for stride in range(1, seq_len + 1):
            wins = _windows(ids, seq_len, stride)
            assert sum(n for _, n in wins) == len(ids) - 1, (seq_len, stride)
            for w, n in wins:
                assert len(w) <= seq_len and n < len(w)  # each scored token has at least one token before it
            scored = [t for w, n in wins for t in w[len(w) - n:]]
            assert scored == ids[1:], (seq_len, stride)
