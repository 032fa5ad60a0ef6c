"""Held-out matching, category-balanced selection, canonical processing order."""

from __future__ import annotations

from pathlib import Path

import pytest

from qihuang.config import ConfigError
from qihuang.corpus.split import Candidate, check_heldout, is_heldout, processing_order, select


def cand(name: str, category: str, year: int | None = None, size: int = 1000) -> Candidate:
    return Candidate(path=Path(name), name=name, title=name.split("-", 1)[1].removesuffix(".txt"),
                     category=category, year=year, size=size)


CANDS = [cand("001-甲本草.txt", "本草", 500, size=900_000), cand("002-乙本草.txt", "本草", 1500), cand("003-丙本草.txt", "本草"),
         cand("004-丁方.txt", "方书", 700), cand("005-戊方.txt", "方书", 100), cand("006-己经.txt", "医经", -200),
         cand("007-庚案.txt", "医案医话", 1800)]


def test_heldout_matches_title_or_file() -> None:
    assert is_heldout(CANDS[0], ["甲本草"]) and is_heldout(CANDS[0], ["001-甲本草.txt"])
    assert is_heldout(CANDS[0], ["001-甲本草"]) and not is_heldout(CANDS[0], ["甲"])
    assert check_heldout(CANDS, ["甲本草", "无此书"], strict=False) == ["无此书"]
    with pytest.raises(ConfigError, match="无此书"):
        check_heldout(CANDS, ["无此书"], strict=True)


def test_select_spreads_across_categories_deterministically() -> None:
    got = select(CANDS, ["庚案"], max_books=3)
    # per category, the book nearest the median size comes first: 乙本草 before the huge 甲本草
    assert [c.title for c in got] == ["庚案", "乙本草", "丁方", "己经"]
    assert select(CANDS, ["庚案"], max_books=3) == got
    assert len(select(CANDS, [], None)) == len(CANDS)
    assert [c.title for c in select(CANDS, ["庚案"], max_books=0)] == ["庚案"]


def test_processing_order_heldout_then_earliest() -> None:
    order = [c.title for c in processing_order(CANDS, ["乙本草"])]
    assert order == ["乙本草", "己经", "戊方", "甲本草", "丁方", "庚案", "丙本草"]
