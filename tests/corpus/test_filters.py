"""Quality filters: each step keeps good text and rejects its own kind of bad text with its reason."""

from __future__ import annotations

import pytest

from qihuang.corpus.filters import FILTERS, FilterConfig, Probe, check, cjk_count

GOOD = "虚者正气不足，实者邪气有余。虚则补之，实则泻之，此不易之法也。若虚实错杂，当先其所急。"
CFG = FilterConfig(min_chars=24)


def test_good_text_passes_every_filter() -> None:
    assert check(GOOD, CFG) == (True, "")
    for f in FILTERS:
        keep, reason = f(Probe(GOOD), CFG)
        assert keep and reason


@pytest.mark.parametrize("text, reason", [
    ("虚则补之，实则泻之。", "too_short"),
    ("The quick brown fox jumps over the lazy dog again and again, " + GOOD[:30], "mostly_non_chinese"),
    ("虚 实 ， 寒 热 ， " * 8, "table_debris"),
    (GOOD + "□□□□□□□□□□□□" + GOOD, "repeated_chars"),
    ("之" * 30 + "虚实寒热表里阴阳气血津液" * 2 + "之" * 20, "repeated_chars"),
    ((GOOD * 2).replace("之", "\ufffd"), "replacement_chars"),
])
def test_each_filter_rejects_its_case(text: str, reason: str) -> None:
    assert check(text, CFG) == (False, reason)


def test_cjk_count_includes_extension_b() -> None:
    assert cjk_count("甲乙𠀀abc，。") == 3
