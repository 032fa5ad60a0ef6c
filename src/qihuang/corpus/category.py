"""Book categories like HuangDI's, from an ordered rule table over titles (first match wins) that a user can
extend with a YAML/JSON file of their own rules and exact per-title overrides."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from qihuang.config import ConfigError

CATEGORIES: tuple[str, ...] = ("医经", "伤寒金匮", "诊法", "本草", "方书", "温病", "针灸推拿", "临证各科",
                               "医案医话", "养生", "综合")

DEFAULT_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("伤寒金匮", ("伤寒", "金匮", "仲景", "中寒论", "玉函")),
    ("温病", ("温病", "温热", "瘟疫", "温疫", "疫", "伤暑", "暑", "霍乱", "湿热", "时病", "伏气", "瘴疟", "热病")),
    ("医经", ("内经", "素问", "灵枢", "难经", "太素", "类经", "医经", "运气", "外经", "玄珠", "中藏经", "灵素",
              "病源", "原病式")),
    ("针灸推拿", ("针", "灸", "经穴", "明堂", "经络", "推拿", "按摩", "穴", "铜人", "流注", "奇经", "十四经")),
    ("诊法", ("脉", "诊", "舌", "望", "察病", "色诊")),
    ("本草", ("本草", "药性", "药征", "药鉴", "炮炙", "炮制", "食疗", "食治", "饮膳", "饮食", "本经", "药分剂",
              "药赋", "食鉴")),
    ("临证各科", ("女科", "妇", "产", "胎", "坤", "嗣", "幼", "儿", "婴", "痘", "疹", "麻科", "痧", "外科", "疡",
                  "伤科", "跌", "骨", "接骨", "金疮", "眼", "目经", "目科", "明目", "银海", "瑶函", "原机启微", "喉", "口齿", "虚劳",
                  "虚损", "理虚", "痰", "血证", "中风", "疯", "疠", "脚气", "杂病", "颅囟", "背疽", "解围", "男科",
                  "鬼遗", "急救")),
    ("养生", ("养生", "寿世", "导引", "易筋", "仙经", "养老", "修昆仑", "性命", "女丹", "长生", "摄生", "卫生歌")),
    ("医案医话", ("医案", "医话", "方案", "寓意草", "回春录", "随笔", "医说", "杂着", "杂说", "医论", "读书记",
                  "一得集", "归砚录", "医暇", "医衡", "刍言", "课儿策", "源流论", "质疑", "奇症", "知医必辨",
                  "医医", "琐语", "举隅", "讲", "心传")),
    ("方书", ("方", "汤头", "歌括", "歌诀", "千金", "外台", "局方", "济生", "集验", "秘要", "十剂")),
]
"""(category, title substrings) in priority order; a title matching none is 综合."""

EXACT_TITLES: dict[str, str] = {
    "医学课儿策": "医案医话", "外治寿世方": "方书", "诊余举隅录": "医案医话", "喉舌备要秘旨": "临证各科",
    "达生编": "临证各科", "济阴纲目": "临证各科", "名医别录": "本草", "医林改错": "医案医话", "玉台新案": "医案医话",
    "宜麟策": "临证各科", "脾胃论": "医经", "格致余论": "医案医话", "洗冤集录": "综合",
}
"""Built-in exact title overrides for titles the substring table gets wrong."""

FALLBACK = "综合"


def load_rules(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """User rules from YAML/JSON `{category: [substring, ...]}` (order kept); errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read category rules ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{path}: category rules must map category -> list of title substrings")
    return [(str(k), tuple(str(x) for x in v)) for k, v in data.items()]


class Categoriser:
    """Assign a category to a book title (exact overrides, then user rules, then the default table)."""

    def __init__(self, rules_file: Path | None = None, overrides: list[str] | None = None) -> None:
        self.overrides: dict[str, str] = {}
        for item in overrides or []:
            title, _, cat = item.partition("=")
            self.overrides[title.strip()] = cat.strip()
        self.rules = (load_rules(rules_file) if rules_file else []) + DEFAULT_RULES

    def __call__(self, title: str, file_name: str = "") -> str:
        for key in (title, file_name, Path(file_name).stem):
            if key and key in self.overrides:
                return self.overrides[key]
        if title in EXACT_TITLES:
            return EXACT_TITLES[title]
        for cat, needles in self.rules:
            if any(n in title for n in needles):
                return cat
        return FALLBACK
