"""bpc: equals a hand computation (single window and sliding windows), is per character, respects the budget."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from qihuang.evaluate.bpc import evaluate_bpc, read_passages

from .conftest import write_jsonl


def _hand_bits(model: Any, tok: Any, text: str, window: int, stride: int) -> float:
    """Independent reference: each token scored once, by the first window (starts 0, stride, 2*stride, ...) whose
    end is past it, conditioned on that window's tokens before it; one forward per token."""
    seq = [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids
    n = len(seq)
    bits = 0.0
    for j in range(1, n):
        k = 0
        while min(k * stride + window, n) <= j:
            k += 1
        begin = k * stride
        ctx = torch.tensor([seq[begin:j]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ctx).logits[0, -1].float(), dim=-1)
        bits -= float(logp[seq[j]]) / math.log(2)
    return bits


@pytest.mark.parametrize("window,stride", [(512, 256), (8, 4), (6, 5)])
def test_bpc_matches_hand_computation(tiny: tuple[Any, Any], tmp_path: Path, window: int, stride: int) -> None:
    model, tok = tiny
    text = "黄帝曰：夫自古通天者，生之本，本于阴阳。"
    f = write_jsonl(tmp_path / "h.jsonl", [{"id": "x", "book": "b", "text": text}])
    r = evaluate_bpc(model, tok, f, 0, window, stride)
    expected = _hand_bits(model, tok, text, window, stride) / len(text)
    assert r["chars"] == len(text)
    assert r["bpc"] == pytest.approx(expected, rel=1e-4)


class _Uniform(torch.nn.Module):
    """A 'model' whose next-token distribution is uniform over the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        class Out:
            logits = torch.zeros((*input_ids.shape, self.vocab))

        return Out()


def test_bpc_is_per_character_not_per_token(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Under a uniform model every token costs log2(V) bits: bpc = tokens/char * log2(V), so texts the tokenizer
    cuts finely (Chinese here) and coarsely (English) get different bpc while bits/token stays the same."""
    _, tok = tiny
    vocab = len(tok)
    results = {}
    for name, text in {"zh": "阴阳者，天地之道也。", "en": "the way of heaven and earth"}.items():
        f = write_jsonl(tmp_path / f"{name}.jsonl", [{"book": name, "text": text}])
        r = evaluate_bpc(_Uniform(vocab), tok, f, 0, 64, 32)
        n_tok = len(tok(text, add_special_tokens=False).input_ids)
        assert r["tokens"] == n_tok
        assert r["bpc"] == pytest.approx(n_tok * math.log2(vocab) / len(text), rel=1e-6)
        assert r["bits_per_token"] == pytest.approx(math.log2(vocab), rel=1e-6)
        assert r["bpc"] == pytest.approx(r["bits_per_token"] * r["tokens_per_char"], rel=1e-9)
        results[name] = r
    assert results["zh"]["tokens_per_char"] > results["en"]["tokens_per_char"]
    assert results["zh"]["bpc"] > results["en"]["bpc"]


def test_budget_round_robin_and_by_book(tiny: tuple[Any, Any], heldout_file: Path) -> None:
    passages = read_passages(heldout_file, 25)
    assert sum(len(p["text"]) for p in passages) == 25
    assert [p["book"] for p in passages] == ["甲书", "乙书"]  # books take turns before a book's 2nd passage
    assert len(read_passages(heldout_file, 0)) == 3
    model, tok = tiny
    r = evaluate_bpc(model, tok, heldout_file, 0, 512, 256)
    assert set(r["by_book"]) == {"甲书", "乙书"} and r["passages"] == 3
    assert min(r["by_book"].values()) <= r["bpc"] <= max(r["by_book"].values())


def test_stride_must_leave_context(tiny: tuple[Any, Any], heldout_file: Path) -> None:
    from qihuang.config import ConfigError
    from qihuang.evaluate import EvalConfig

    with pytest.raises(ValueError, match="stride"):
        evaluate_bpc(*tiny, heldout_file, 0, 8, 8)
    with pytest.raises(ConfigError, match="bpc_stride"):
        EvalConfig(bpc_window=8, bpc_stride=8)


def test_heldout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_passages(tmp_path / "missing.jsonl", 10)
    with pytest.raises(ValueError, match="no passage"):
        read_passages(write_jsonl(tmp_path / "e.jsonl", [{"text": " "}, {"id": 1}]), 10)


def test_batches_keep_logits_within_budget(tiny: tuple[Any, Any], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang.training import bpc

    windows = [([1] * n, n - 1) for n in (4, 8, 8, 512, 512, 512)]
    assert [len(b) for b in bpc._batches(windows, 8, 100)] == [6]
    assert [len(b) for b in bpc._batches(windows, 8, 49_152)] == [1] * 6  # 512 x 49,152 x 4 B = 100 MB a row
    model, tok = tiny
    text = "黄帝曰：夫自古通天者，生之本，本于阴阳。" * 3
    f = write_jsonl(tmp_path / "h.jsonl", [{"id": str(i), "book": "b", "text": text[i:]} for i in range(5)])
    whole = evaluate_bpc(model, tok, f, 0, 16, 8)["bpc"]
    vocab = bpc._vocab_size(model)
    monkeypatch.setattr(bpc, "LOGITS_BUDGET_BYTES", 2 * 16 * vocab * 4)  # two windows a forward
    assert evaluate_bpc(model, tok, f, 0, 16, 8)["bpc"] == pytest.approx(whole, rel=1e-5)
