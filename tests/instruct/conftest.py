"""Fixtures for the instruct tests: handmade invented passages (no book text), a tiny lexicon and general set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qihuang.instruct import InstructConfig

INVENTED: list[dict[str, Any]] = [
    {"book": "拟伤寒方论", "section": "辨头痛脉证并治", "category": "伤寒金匮", "dynasty": "明", "author": "甲乙子",
     "text": "1．头痛，恶风，汗出，脉浮缓者，清风汤主之。方一。荆芥（三两） 防风（二两） 甘草（炙，一两）"
             "上三味，以水五升，煮取二升，去滓，温服一升。2．头痛，口渴，脉洪大者，石膏饮主之。方二。"
             "石膏（碎，一斤） 知母（六两） 粳米（六合）上三味，以水六升，煮米熟，汤成去滓，分温三服。"
             "3．头痛日久，面色无华，心悸少寐者，此为血虚也。"},
    {"book": "拟本草经", "section": "青木香", "category": "本草方书", "dynasty": "清", "author": "丙丁氏",
     "text": "味苦，微寒，无毒。主清热解毒，消肿止痛，疗咽喉肿痛。一名青藤根。生山谷。"
             "久服轻身，令人耳目聪明。采根阴干，勿令见风。"},
    {"book": "拟本草经", "section": "赤石脂", "category": "本草方书", "dynasty": "清", "author": "丙丁氏",
     "text": "味甘，温。主泄痢，肠澼脓血，下血赤白。入大肠经。生山谷中。其色赤而腻者良，研细水飞用之。"},
    {"book": "拟内经要旨", "section": "论风眩第三", "category": "医经理论", "dynasty": "宋", "author": "戊己翁",
     "text": "黄帝问曰：人有头目旋转，如坐舟车者，何也？岐伯对曰：此肝风上扰也。风眩者，头目旋转而欲仆也。"
             "其人素体阴虚，阳气独亢，病名曰肝厥。治之当滋阴潜阳，不可妄用辛散之品。"},
    {"book": "拟内经要旨", "section": "论四时养生第五", "category": "医经理论", "dynasty": "宋", "author": "戊己翁",
     "text": "春三月，夜卧早起，广步于庭，以使志生。夏三月，无厌于日，使气得泄。秋三月，早卧早起，与鸡俱兴。"
             "冬三月，早卧晚起，必待日光，去寒就温。逆之则伤肾，春为痿厥。"},
    {"book": "拟临证指南", "section": "咳嗽门", "category": "临证各科", "dynasty": "清", "author": "庚辛生",
     "text": "咳嗽一证，有外感内伤之分。外感咳嗽，多兼恶寒发热，鼻塞流涕，治宜宣肺散邪。"
             "内伤咳嗽，多见气短乏力，痰少而黏，治宜润肺养阴。久咳不已，须防肺痿。"},
    {"book": "拟针灸秘要", "section": "足三里穴", "category": "针灸推拿", "dynasty": "元", "author": "壬癸子",
     "text": "足三里在膝下三寸，胫骨外廉。主胃中寒，心腹胀满，肠鸣泄泻，食不化。针五分，灸七壮。"
             "凡人年过三十，宜常灸此穴，使眼目明亮，气血调和。"},
    {"book": "拟温病条辨", "section": "上焦篇", "category": "温病", "dynasty": "清", "author": "子丑氏",
     "text": "4．温病初起，发热微恶寒，口微渴，咽痛者，银花散主之。方四。银花（一两） 连翘（一两） "
             "薄荷（六钱）上三味，杵为散，每服六钱，鲜苇根汤煎服。5．温病，汗出而热不解，烦渴者，热在气分也。"},
    {"book": "拟医话丛谈", "section": "论用药宜精", "category": "医案医话", "dynasty": "清", "author": "寅卯翁",
     "text": "用药之道，贵精不贵多。昔有医者治一妇人胃痛，仅用良姜香附二味而愈。"
             "今人处方动辄二三十味，药多则力分，反不见功。医者当审证求因，切勿杂投。"},
    {"book": "拟诊法心法", "section": "论脉浮", "category": "诊法", "dynasty": "明", "author": "辰巳子",
     "text": "浮脉者，举之有余，按之不足，如水漂木也。浮而有力为表实，浮而无力为表虚。"
             "浮紧者伤寒，浮缓者伤风，浮数者风热。久病见浮脉，多属虚阳外越，宜慎之。"},
    {"book": "拟女科要略", "section": "经闭门", "category": "临证各科", "dynasty": "清", "author": "午未氏",
     "text": "经闭之证，有血枯血滞之异。血枯者，面色萎黄，身体羸瘦，治当养血益阴。"
             "血滞者，少腹胀痛，拒按，治当活血通经。不可概用攻破之药，恐伤正气。"},
    {"book": "拟养生随笔", "section": "饮食宜忌", "category": "养生", "dynasty": "明", "author": "申酉居士",
     "text": "饮食宜清淡，勿过饱。早餐宜粥，可以养胃。晚餐宜少，夜卧方安。"
             "酒能通血脉，少饮则和，多饮则伤神耗血。生冷之物，脾胃虚者尤当戒之。"},
]
LEXICON = ["头痛", "恶风", "汗出", "血虚", "清热解毒", "消肿止痛", "咽喉肿痛", "泄痢", "风眩", "肝厥", "滋阴潜阳",
           "阴虚", "外感", "内伤", "宣肺", "肺痿", "足三里", "泄泻", "温病", "气分", "表实", "表虚", "伤寒",
           "伤风", "风热", "虚阳外越", "经闭", "血枯", "血滞", "活血通经", "养血", "脾胃", "养胃", "肠鸣"]


def write_passages(path: Path, records: list[dict[str, Any]] | None = None) -> Path:
    records = INVENTED if records is None else records
    pos = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i, r in enumerate(records):
            rec = {"id": f"p{i:03d}", "book_file": r["book"] + ".txt", "notes": [], "start": pos,
                   "end": pos + len(r["text"]), **r}
            pos += len(r["text"])
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


@pytest.fixture()
def passages_file(tmp_path: Path) -> Path:
    return write_passages(tmp_path / "passages.jsonl")


@pytest.fixture()
def lexicon_file(tmp_path: Path) -> Path:
    p = tmp_path / "lexicon.txt"
    p.write_text("\n".join(LEXICON) + "\n", encoding="utf-8")
    return p


@pytest.fixture()
def general_file(tmp_path: Path) -> Path:
    p = tmp_path / "general.json"
    items = [{"instruction": f"请用一句话介绍数字{i}。", "input": "", "output": f"数字{i}是一个整数，常用于计数。"}
             for i in range(40)]
    p.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return p


@pytest.fixture()
def base_cfg(lexicon_file: Path, general_file: Path) -> InstructConfig:
    """Offline config that needs no shared data."""
    return InstructConfig(lexicon=str(lexicon_file), general_data=[str(general_file)], heldout_fraction=0.2,
                          max_type_share=1.0, general_ratio=0.2)
