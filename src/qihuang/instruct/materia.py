"""Materia medica and formula generators: formula blocks (`桂枝（去皮，三两） 芍药（三两）… 上N味…`) →
composition, preparation and indication; 本草 entries → 性味/归经 and 主治."""

from __future__ import annotations

import random
import re

from qihuang.instruct import templates as T
from qihuang.instruct.records import Pair, Passage
from qihuang.instruct.textutil import (
    JUNK,
    Lexicon,
    balanced,
    cjk_ratio,
    make_pair,
    sec,
    section_parts,
    sentences,
    trim_unbalanced,
)

_ITEM = re.compile(r"([\u4e00-\u9fff]{1,6})\s*（([^（）]{1,24})）")
_FORMULA_NAME = re.compile(r"([\u4e00-\u9fff]{1,14}(?:汤|散|丸|饮|膏|丹))(?=主之|方|[。，；∶：\s]|$)")
_LEAD = re.compile(r"^(?:又|名|一名|号|宜|与|予|可与|可服|更作|作|服|用|宜服|宜用|复与|还与|乃与|主以|当以|宜以)"
                   r"(?=[\u4e00-\u9fff]{2})")
_NOT_NAME = re.compile(r"捣|罗|煮取|每服|饮下|服|以|为散|为末|为丸|丸如|和丸|研|冲|送下|调下|[一二三四五六七八九十百]+丸$|方[一二三四五六七八九十]")
_PREP = re.compile(r"\s*((?:上|右)[^。\n]{0,80}?。)")
_NATURE = re.compile(r"(味?[甘苦辛酸咸淡涩]{1,3}[，、]?(?:大|微|小)?(?:寒|温|平|凉|热))(?:[，、]?(有小毒|有大毒|有毒|无毒))?")
_MERIDIAN = re.compile(r"入([\u4e00-\u9fff、]{1,12}?)(?:二|三)?经")
_INDICATION = re.compile(r"(?:^|[。，；\n])((?:主|治|主治)[^。\n]{4,160}。)")
_BLOCK = re.compile(
    r"(?:(?<=[。∶：）\n])|^)[ \t]*((?:[\u4e00-\u9fff]{1,7}(?:\s*（[^（）]{1,30}）\s*|\s+))+"
    r"[\u4e00-\u9fff]{1,7}(?:\s*（[^（）]{1,30}）)?)\s*"
    r"(?=(?:上|右)(?:[一二三四五六七八九十]{1,3}味|件|为|细|药|捣|剉|锉|咀|各|末)|(?:㕮)?咀|(?:以)?水[一二三四五六七八九十]+[升盏])"
)
_TOKEN = re.compile(r"([\u4e00-\u9fff]{1,7})(?:\s*（([^（）]{1,30})）)?")


def _formula_blocks(text: str) -> list[tuple[str, int, int, list[str], str, int]]:
    """(name, block start, block end, items, preparation text, name start) for each formula block.

    A block is a run of space-separated herb tokens (``桂枝（去皮，三两） 芍药 …``) followed by ``上N味…``.
    """
    out = []
    for m in _BLOCK.finditer(text):
        items = ["".join((f"{a}（{b}）" if b else a).split()) for a, b in _TOKEN.findall(m.group(1))]
        if len(items) < 2 or sum("（" in it for it in items) < min(2, len(items)) or not all(map(balanced, items)):
            continue
        before = text[max(0, m.start(1) - 60) : m.start(1)]
        names = list(_FORMULA_NAME.finditer(before))
        name, ns = (_LEAD.sub("", names[-1].group(1)), max(0, m.start(1) - 60) + names[-1].start()) if names else ("", 0)
        if len(name) < 2 or _NOT_NAME.search(name):
            name = ""
        prep = ""
        pm = _PREP.match(text, m.end(1))
        if pm:
            prep = pm.group(1)
            rest = text[pm.end() : pm.end() + 200]
            for s, e, sent in sentences(rest)[:5]:
                if (re.match(r"\s*(?:\d|治|疗|又)", sent) or "\n" in rest[:s] or len(sent) > 50 or len(prep) > 120
                        or not re.search(r"服|煮|煎|将息|分温|为散|为末|捣|研|丸|盏|水|滓", sent)
                        or re.search(r"方[∶:：]|（", sent)):
                    break
                prep += sent
        out.append((name, m.start(1), m.end(1), items, trim_unbalanced(prep), ns))
    return out


def _indication_before(text: str, start: int) -> str:
    """The sentence right before a formula block when it reads like an indication (治…/疗…/…者), else ''."""
    head = text[max(0, start - 80) : start].rstrip()
    cut = max(head.rfind(c) for c in "。\n∶：") if head else -1
    prev = head[cut + 1 :].strip(" ，。") if cut < len(head) - 1 else ""
    if not prev:  # the block follows a full sentence: take that sentence
        parts = [x for x in re.split(r"[。\n]", head) if x.strip()]
        prev = parts[-1].strip(" ，") if parts else ""
    prev = re.sub(r"[，,]?(?:宜服|宜用|可服|宜|服)?此方.*$|[，,]?(?:宜服|宜用)[^，,]*方$", "", prev).strip(" ，")
    prev = re.sub(r"(?:之)?方[：:∶]?$", "", prev).strip(" ，：:∶")
    ok = 6 <= len(prev) <= 40 and cjk_ratio(prev) > 0.8 and balanced(prev) and not JUNK.search(prev)
    return prev if ok and re.search(r"治|疗|主|者$", prev) else ""


def gen_formula(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """方剂组成 / 方剂煎服 / 方证主治 from formula blocks like `桂枝（去皮，三两） 芍药（三两）…`."""
    out = []
    for name, s, e, items, prep, ns in _formula_blocks(p.text):
        comp = "、".join(items)
        if name:
            q = T.fill(rng, T.FORMULA_Q, name=name, book=p.book)
            a = T.fill(rng, T.FORMULA_A, name=name, book=p.book, comp=comp, k=len(items))
        else:
            ind = _indication_before(p.text, s)
            if not ind:
                continue
            name = f"治“{ind}”之方"
            q = T.fill(rng, T.FORMULA_IND_Q, ind=ind, book=p.book)
            a = T.fill(rng, T.FORMULA_IND_A, ind=ind, book=p.book, section=sec(p), comp=comp, k=len(items))
        out.append(make_pair(p, q, a, "方剂组成", "formula", (s, e), formula=name))
        if prep and len(prep) >= 6:
            q = T.fill(rng, T.PREP_Q, name=name, book=p.book)
            a = T.fill(rng, T.PREP_A, name=name, book=p.book, prep=prep)
            ps = p.text.find(prep, e)
            out.append(make_pair(p, q, a, "方剂煎服", "formula_prep", (ps, ps + len(prep)), formula=name))
    # 方证: "……者，X汤主之。"
    for s, e, sent in sentences(p.text):
        if "主之" not in sent:
            continue
        m = re.search(r"([^。]{6,120}?)[，,]?\s*([\u4e00-\u9fff]{2,14}?(?:汤|散|丸|饮))主之", sent)
        if not m:
            continue
        cond = trim_unbalanced(re.sub(r"^\d{1,3}[．.、]\s*", "", m.group(1).strip("，, ")))
        name = _LEAD.sub("", m.group(2))
        if (len(cond) < 6 or cjk_ratio(cond) < 0.8 or _NOT_NAME.search(name) or not balanced(cond)
                or re.search(r"^宜|[泻加宜与]$", cond)):  # a formula name split by a stray comma
            continue
        q = T.fill(rng, T.INDICATION_Q, name=name, book=p.book)
        a = T.fill(rng, T.INDICATION_A, name=name, book=p.book, cond=cond)
        out.append(make_pair(p, q, a, "方证主治", "formula_indication", (s, e), formula=name))
    return out


def _is_herb_entry(p: Passage) -> bool:
    name = (section_parts(p) or [""])[-1]
    return (1 < len(name) <= 6 and cjk_ratio(name) == 1.0 and bool(_NATURE.search(p.text[:60]))
            and any("本草" in x for x in (p.book, p.category, p.section)))


def gen_herb(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """药物性味 / 药物主治 (and 归经) from a 本草 entry whose section is the herb's name."""
    if not _is_herb_entry(p):
        return []
    herb, out = section_parts(p)[-1], []
    nat = _NATURE.search(p.text[:80])
    first = sentences(p.text)[0]
    if nat and first[0] <= nat.start() < first[1] and len(first[2]) <= 24 and balanced(first[2]):
        nature = first[2].strip().rstrip("。；")  # the whole opening clause: 味咸，平、微寒，无毒
    elif nat:
        nature = nat.group(1) + (f"，{nat.group(2)}" if nat.group(2) else "")
    if nat:
        mer = _MERIDIAN.search(p.text[:200])
        merid = f"入{mer.group(1)}经" if mer else ""
        q = T.fill(rng, T.HERB_NATURE_Q, herb=herb, book=p.book)
        a = T.fill(rng, T.HERB_NATURE_A, herb=herb, book=p.book, nature=nature)
        if merid:
            a = a.rstrip("。") + T.fill(rng, T.HERB_MERIDIAN_TAIL, merid=merid)
        end = max(first[1] if nature == first[2].strip().rstrip("。；") else nat.end(), mer.end() if mer else 0)
        out.append(make_pair(p, q, a, "药物性味", "herb_nature", (nat.start(), end), herb=herb))
    ind = _INDICATION.search(p.text[:300])
    if ind:
        text = trim_unbalanced(ind.group(1))
        if len(text) < 4:
            return out
        q = T.fill(rng, T.HERB_USE_Q, herb=herb, book=p.book)
        a = T.fill(rng, T.HERB_USE_A, herb=herb, book=p.book, use=text)
        out.append(make_pair(p, q, a, "药物主治", "herb_use", (ind.start(1), ind.end(1)), herb=herb))
    return out
