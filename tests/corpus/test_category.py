"""Category rule table: defaults, user rules file, exact overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from qihuang.config import ConfigError
from qihuang.corpus.category import CATEGORIES, Categoriser


@pytest.mark.parametrize("title, category", [
    ("黄帝内经素问", "医经"), ("注解伤寒论", "伤寒金匮"), ("金匮要略心典", "伤寒金匮"), ("濒湖脉学", "诊法"),
    ("本草纲目", "本草"), ("医方集解", "方书"), ("温病条辨", "温病"), ("针灸大成", "针灸推拿"),
    ("傅青主女科歌括", "临证各科"), ("外科正宗", "临证各科"), ("临证指南医案", "医案医话"), ("寿世青编", "养生"),
    ("景岳全书", "综合"), ("小儿药证直诀", "临证各科"),
])
def test_default_rules(title: str, category: str) -> None:
    assert Categoriser()(title) == category
    assert category in CATEGORIES


def test_user_rules_and_overrides(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("讲义: [讲义]\n综合: [全书]\n", encoding="utf-8")
    cat = Categoriser(rules, ["景岳全书=方书", "009-x.txt=养生"])
    assert cat("中医基础讲义") == "讲义"
    assert cat("景岳全书") == "方书"  # exact override beats the user rules
    assert cat("张氏全书") == "综合"
    assert cat("伤寒论", "009-x.txt") == "养生"
    assert cat("伤寒论") == "伤寒金匮"


def test_bad_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="rules.yaml"):
        Categoriser(bad)
