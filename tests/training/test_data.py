"""Packing, data order, schedule and spike guard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qihuang.training.data import IGNORE, mix_documents, pack_documents, read_general
from qihuang.training.schedule import SpikeGuard, lr_at


class CharTok:
    """One id per character (ids from ord), EOS = 0: enough to check packing arithmetic."""

    eos_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_packing_resets_positions_and_masks_document_starts() -> None:
    data = pack_documents(CharTok(), ["abc", "defgh", "ij"], seq_len=4, seed=0)
    # stream: a b c EOS d e f g h EOS i j EOS (13 tokens) -> 3 blocks of 4 (+1 shared token)
    assert len(data.stream) == 13 and data.n_blocks == 3
    inputs, pos, targets = data.block(0)
    assert [chr(x) if x else "|" for x in inputs] == ["a", "b", "c", "|"]
    assert targets.tolist() == [ord("b"), ord("c"), 0, IGNORE]  # 'd' starts a new document: not a target
    assert pos.tolist() == [0, 1, 2, 3]
    inputs, pos, targets = data.block(1)
    assert [chr(x) if x else "|" for x in inputs] == ["d", "e", "f", "g"]
    assert pos.tolist() == [0, 1, 2, 3]
    inputs, pos, targets = data.block(2)
    assert [chr(x) if x else "|" for x in inputs] == ["h", "|", "i", "j"]
    assert pos.tolist() == [0, 1, 0, 1] and targets.tolist() == [0, IGNORE, ord("j"), 0]
    batch = data.batch([2, 0])
    assert tuple(batch["input_ids"].shape) == (2, 4) and batch["position_ids"][0].tolist() == [0, 1, 0, 1]
    assert data.n_targets([2]) == 3


def test_order_is_a_pure_function_of_seed_and_step() -> None:
    docs = ["x" * 50 for _ in range(20)]
    a = pack_documents(CharTok(), docs, 16, seed=3)
    b = pack_documents(CharTok(), docs, 16, seed=3)
    n = a.n_blocks
    first = a.sample_ids(0, n)
    assert sorted(first) == list(range(n))  # an epoch visits every block once
    assert a.sample_ids(5, 7) == b.sample_ids(5, 7) == first[5:12]
    assert a.sample_ids(n, n) != first and sorted(a.sample_ids(n, n)) == list(range(n))
    assert pack_documents(CharTok(), docs, 16, seed=4).sample_ids(0, n) != first


def test_pack_needs_one_block() -> None:
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents(CharTok(), ["ab"], seq_len=8, seed=0)


def test_general_mix_ratio(tmp_path: Path) -> None:
    gen = tmp_path / "g.json"
    gen.write_text('[{"instruction": "问", "input": "", "output": "答' + "好" * 98 + '"}]'.replace("}]", "}," * 0 + "}]"),
                   encoding="utf-8")
    general = read_general(gen) * 50
    assert general[0].startswith("问\n答")
    domain = ["医" * 100] * 90
    docs, chars = mix_documents(domain, general, 0.1, seed=0)
    assert chars["domain_chars"] == 9000 and 900 <= chars["general_chars"] <= 1100
    assert len(docs) == 90 + chars["general_chars"] // 101
    capped, c2 = mix_documents(domain, [], 0.0, seed=0, max_chars=1000)
    assert c2["domain_chars"] == 1000 and len(capped) == 10


def test_cosine_schedule() -> None:
    assert lr_at(0, 1.0, 4, 20, 0.1) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20, 0.1) == pytest.approx(0.55)
    assert lr_at(20, 1.0, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_at(99, 1.0, 4, 20, 0.1) == pytest.approx(0.1)


def test_spike_guard_skips_then_rolls_back() -> None:
    g = SpikeGuard(factor=2.0, max_in_row=3, min_steps=3)
    assert [g.check(x) for x in (5.0, 5.0, 5.0, 4.0)] == ["ok"] * 4
    assert g.check(50.0) == "skip" and g.check(float("nan")) == "skip"
    assert g.check(60.0) == "rollback" and g.skipped == 3 and g.rollbacks == 1
    assert g.check(4.5) == "ok" and g.in_row == 0
    state = g.state()
    h = SpikeGuard()
    h.load(state)
    assert h.ema == g.ema and h.skipped == 3
    assert not math.isnan(h.ema)
    assert np.isfinite(h.ema)


def test_spike_guard_gradient_norm_arm() -> None:
    g = SpikeGuard(factor=3.0, max_in_row=3, min_steps=3, grad_factor=4.0)
    assert [g.check(5.0, n) for n in (2.0, 2.0, 2.0, 2.0)] == ["ok"] * 4
    assert g.check(5.0, 9.0) == "skip" and g.grad_skipped == 1 and g.skipped == 1  # ordinary loss, 4.5x norm
    assert g.grad_ema == pytest.approx(2.0)  # a skipped step does not move the averages
    assert g.check(5.0, 7.0) == "ok" and g.in_row == 0
    h = SpikeGuard()
    h.load(g.state())
    assert h.grad_factor == 4.0 and h.grad_ema == g.grad_ema and h.grad_skipped == 1


def test_spike_guard_rollback_keeps_counts() -> None:
    g = SpikeGuard(factor=2.0, max_in_row=2, min_steps=1, grad_factor=4.0)
    g.check(5.0, 1.0)
    saved = g.state()  # what a checkpoint holds
    g.check(5.0, float("nan"))
    assert g.check(50.0, 1.0) == "rollback"
    g.load(saved, keep_counters=True)
    assert (g.skipped, g.grad_skipped, g.rollbacks) == (2, 1, 1) and g.accepted == 1 and g.in_row == 0
    g.load(saved)  # a resume after a crash: the checkpoint's counts
    assert (g.skipped, g.grad_skipped, g.rollbacks) == (0, 0, 0)


def test_spike_guard_non_finite_gradient_always_skipped() -> None:
    g = SpikeGuard(factor=0.0, grad_factor=0.0)  # both ratio arms off
    assert g.check(5.0, 1.0) == "ok"
    assert g.check(5.0, float("nan")) == "skip" and g.check(5.0, float("inf")) == "skip"
    assert g.grad_skipped == 2 and g.grad_ema == 1.0
    assert g.check(5.0, None) == "ok"  # no norm (DeepSpeed clips inside): judged on the loss alone


def test_out_of_memory_probe_suggests_batch_size() -> None:
    import torch

    from qihuang.training.loop import largest_fitting_batch_size

    class Fake(torch.nn.Module):
        """Runs out of memory above 3 sequences per batch."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[0] > 3:
                raise torch.OutOfMemoryError("fake")
            return self.w * input_ids.float().sum()

    data = pack_documents(CharTok(), ["x" * 400], 8, seed=0)
    assert largest_fitting_batch_size(Fake(), data, torch.device("cpu"), 16) == 2
    assert largest_fitting_batch_size(Fake(), data, torch.device("cpu"), 1) == 0
