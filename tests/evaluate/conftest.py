"""Fixtures for the evaluation tests: the tiny model loaded once, and writers for handmade eval files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the random tiny LLaMA, in eval mode."""
    from qihuang.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    model.eval()
    return model, tok


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# Handmade questions (written for these tests; not taken from any data set).
GOOD_CMMLU = """,Question,A,B,C,D,Answer
0,一年有几个季节,一,二,三,四,D
1,水在零度会怎样,结冰,沸腾,蒸发,燃烧,A
2,太阳从哪边升起,西,东,南,北,B
"""

BAD_CSV = """QUESTION,a,b,c,ANSWER
一加一等于几,一,二,三,B
,甲,乙,丙,A
缺一个选项,甲,,丙,A
答案不在选项中,甲,乙,丙,E
多选答案,甲,乙,丙,AB
行太短,甲
二加二等于几,三,四,五,b
"""


@pytest.fixture()
def heldout_file(tmp_path: Path) -> Path:
    """Three short handmade passages from two 'books'."""
    recs = [
        {"id": "a1", "book": "甲书", "text": "春生夏长，秋收冬藏，此天地之常也。"},
        {"id": "b1", "book": "乙书", "text": "饮食有节，起居有常，不妄作劳。"},
        {"id": "a2", "book": "甲书", "text": "人以天地之气生，四时之法成。"},
    ]
    return write_jsonl(tmp_path / "heldout.jsonl", recs)
