"""Chinese question/answer templates of the offline generators (our own wording, several per task for variety)."""

from __future__ import annotations

import random
from typing import Any


def fill(rng: random.Random, templates: tuple[str, ...], **kw: Any) -> str:
    """One template, chosen with `rng`, filled with `kw`."""
    return rng.choice(templates).format(**kw)


ATTRIBUTION_Q = (
    "「{s}」这句话出自哪部医书？",
    "请指出下面这句古籍原文的出处：{s}",
    "“{s}”见于哪本中医典籍的哪一篇？",
    "有句话说：“{s}”请问它出自何书何篇？",
    "我读到“{s}”，想知道这是哪部医籍里的话。",
)
ATTRIBUTION_A = (
    "这句话出自《{book}》的「{section}」篇（{who}）。原文作：“{s}”",
    "出自《{book}》·{section}。{who}在书中写道：“{s}”",
    "见于《{book}》「{section}」，原句为：“{s}”",
    "它出自{who}所著《{book}》中的「{section}」一节，原文是“{s}”",
)

SECTION_Q = (
    "「{section}」是哪部医书中的篇章？",
    "《{section}》这一篇收在哪本古籍里？",
    "请问“{section}”一节出自哪部著作？",
    "哪部中医典籍中有「{section}」这一篇？",
)
SECTION_A = (
    "「{section}」是《{book}》（{who}）中的一篇，其中写道：“{first}”",
    "这一篇收在《{book}》中，作者{who}。篇中有言：“{first}”",
    "出自《{book}》。该篇有“{first}”等语。",
)

CLAUSE_TEXT_Q = (  # the section is always named: some books restart their numbering in every chapter
    "《{book}》「{section}」第{n}条的原文是什么？",
    "请背诵《{book}》「{section}」第{n}条。",
    "《{book}》「{section}」中的第{n}条是怎么说的？",
    "能否给出《{book}》「{section}」篇第{n}条条文？",
)
CLAUSE_TEXT_A = (
    "《{book}》第{n}条：{body}",
    "第{n}条（见「{section}」）原文为：{body}",
    "该条原文是：“{body}”（《{book}》第{n}条）",
)
CLAUSE_NO_Q = (
    "“{head}”是《{book}》的第几条？",
    "下面这段条文在《{book}》中排第几条？{head}",
    "请问《{book}》中“{head}”属于哪一条？",
)
CLAUSE_NO_A = (
    "这是《{book}》「{section}」篇的第{n}条，全文为：{body}",
    "属第{n}条，见「{section}」。原文：“{body}”",
    "第{n}条。该条完整原文是：{body}",
)

FORMULA_Q = (
    "{name}由哪些药物组成？",
    "《{book}》中{name}的组成和用量是什么？",
    "请列出{name}的药味及剂量。",
    "{name}用了哪几味药？各用多少？",
    "按《{book}》的记载，{name}的方药组成如何？",
)
FORMULA_A = (
    "据《{book}》，{name}共{k}味药：{comp}。",
    "{name}的组成为：{comp}。（出自《{book}》）",
    "《{book}》载{name}由{comp}组成，共{k}味。",
)
FORMULA_IND_Q = (
    "《{book}》中治“{ind}”的方子由哪些药物组成？",
    "“{ind}”，《{book}》用的是什么方药？请列出组成。",
    "按《{book}》，“{ind}”一证所用之方包含哪些药？",
)
FORMULA_IND_A = (
    "《{book}》「{section}」载此方共{k}味：{comp}。",
    "所用方药为：{comp}。（见《{book}》「{section}」）",
    "此方由{comp}组成，见于《{book}》。",
)
PREP_Q = (
    "{name}应当如何煎服？",
    "《{book}》中{name}的煎服方法是怎样的？",
    "{name}的煎煮和服用法是什么？",
)
PREP_A = (
    "《{book}》记载{name}的煎服法：{prep}",
    "{name}：{prep}",
    "按原书，{prep}",
)
INDICATION_Q = (
    "《{book}》中{name}主治什么证候？",
    "什么情况下用{name}？请依据《{book}》回答。",
    "{name}在《{book}》里用于哪种病证？",
    "《{book}》用{name}治疗的是什么表现？",
)
INDICATION_A = (
    "《{book}》说：“{cond}，{name}主之。”即见{cond}者，用{name}。",
    "据《{book}》，{cond}，{name}主之。",
    "原文为“{cond}，{name}主之”，所以此证用{name}。",
)

HERB_NATURE_Q = (
    "{herb}的性味是什么？",
    "《{book}》记载{herb}的药性如何？",
    "{herb}味道和寒热属性怎样？",
    "请说明{herb}的性味。",
)
HERB_NATURE_A = (
    "据《{book}》，{herb}{nature}。",
    "《{book}》载：{herb}，{nature}。",
    "{herb}：{nature}（见《{book}》）。",
)
HERB_MERIDIAN_TAIL = ("，{merid}。", "；{merid}。")
HERB_USE_Q = (
    "{herb}主治什么？",
    "《{book}》中{herb}有哪些功用主治？",
    "{herb}能治哪些病？依据《{book}》作答。",
    "请说说{herb}在《{book}》里的主治。",
)
HERB_USE_A = (
    "《{book}》载{herb}：“{use}”",
    "据《{book}》，{herb}{use}",
    "{herb}的主治，《{book}》原文为：{use}",
)

CLOZE_Q = (
    "请补全《{book}》中的这句原文：「{masked}」",
    "填空（《{book}》原文）：{masked}",
    "下面这句出自《{book}》，横线处应是什么？{masked}",
)
CLOZE_A = (
    "应填「{term}」。完整原文是：“{s}”",
    "横线处是“{term}”，原句为：{s}",
    "答案是{term}。《{book}》原文：“{s}”",
)

DEFINE_Q = (
    "《{book}》中「{term}」指的是什么？",
    "什么叫{term}？请依据《{book}》回答。",
    "《{book}》是怎样界定“{term}”的？",
    "古籍里说的{term}是什么意思？以《{book}》为据。",
)
DEFINE_A = (
    "《{book}》说：“{s}”这就是{term}的含义。",
    "据《{book}》：{s}",
    "按《{book}》的说法，{s}",
)
USAGE_Q = (
    "《{book}》「{section}」中是怎样论述“{term}”的？",
    "《{book}》里提到{term}的原文是什么？",
    "请找出《{book}》「{section}」中关于{term}的论述。",
)
USAGE_A = (
    "「{section}」中写道：“{s}”",
    "《{book}》原文：{s}",
    "相关论述见「{section}」：“{s}”",
)

FOLLOW_UP_PREFIX = ("那么，", "接着问一下，", "再请教：", "还有，", "另外，", "顺便问问，", "")
"""Prefixes for later turns of an integrated multi-turn dialogue (追问)."""

SYSTEM_PROMPTS = (
    "你是一位精通中医古籍的助手，回答应以典籍原文为依据，注明出处。",
    "你是中医古籍阅读助手。请依据原文作答，不臆造。",
)
