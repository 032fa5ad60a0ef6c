"""Offline generators: question–answer pairs derived from a passage's structure and the TCM lexicon, no teacher.

Each generator takes a passage (plus a seeded RNG and the lexicon) and returns candidate `Pair`s whose answers
quote or restate the passage (or its title metadata), with the character span of the supporting text.
Templates live in `templates.py`; they are ours and varied.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

from qihuang.instruct import templates as T
from qihuang.instruct.materia import gen_formula, gen_herb
from qihuang.instruct.records import Pair, Passage
from qihuang.instruct.textutil import (
    CLAUSE_NO,
    JUNK,
    Lexicon,
    balanced,
    cjk_ratio,
    key_sentences,
    make_pair,
    sec,
    section_parts,
    sentences,
    trim_unbalanced,
    who,
)
from qihuang.relevance import NAMING

_DEFINE = re.compile(r"([^。！？；]{2,60}?" + NAMING + r"([\u4e00-\u9fff]{2,5})[。！？；])")
_ZHE_YE = re.compile(r"(?:^|[。！？；])\s*(?:所谓)?([\u4e00-\u9fff]{2,6})者，([^。！？；]{4,60})也[。；]")



def gen_attribution(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """出处: a key sentence → book and section."""
    keys = key_sentences(p)
    if not keys:
        return []
    s, e, sent = rng.choice(keys)
    q = T.fill(rng, T.ATTRIBUTION_Q, s=sent)
    a = T.fill(rng, T.ATTRIBUTION_A, s=sent, book=p.book, section=sec(p), who=who(p) or "古人")
    return [make_pair(p, q, a, "出处", "attribution", (s, e))]


def gen_section_book(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """篇名归属: section title → book (with the section's opening words as evidence)."""
    if not section_parts(p) or sec(p) == p.book or cjk_ratio(sec(p)) < 0.8 or JUNK.search(p.section):
        return []
    sents = sentences(p.text)
    if not sents:
        return []
    s, e, first = sents[0]
    if len(first) < 15 and len(sents) > 1:
        e, first = sents[1][1], first + sents[1][2]
    if len(first) > 80:
        first, e = first[:80] + "……", s + 80
    first = first.strip()
    if not balanced(first) or JUNK.search(first) or cjk_ratio(first) < 0.8:
        return []
    q = T.fill(rng, T.SECTION_Q, section=sec(p))
    a = T.fill(rng, T.SECTION_A, section=sec(p), book=p.book, who=who(p) or "佚名", first=first)
    return [make_pair(p, q, a, "篇名归属", "section_book", (s, e))]


def _clauses(text: str) -> list[tuple[int, int, int, str]]:
    """Numbered 条文 (number, start, end, text without the number and trailing formula block)."""
    marks = list(CLAUSE_NO.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end() : end]
        cut = re.search(r"方[一二三四五六七八九十百]+。|[\u4e00-\u9fff]{1,6}\s*（[^（）]{1,24}）\s+[\u4e00-\u9fff]", body)
        if cut:
            body = body[: cut.start() + (len(cut.group(0)) if cut.group(0).startswith("方") else 0)]
        body = re.sub(r"方[一二三四五六七八九十百]+。$", "", body.strip())
        last = max(body.rfind("。"), body.rfind("！"), body.rfind("？"))
        if last <= 0:
            continue
        body = trim_unbalanced(body[: last + 1])
        if i + 1 == len(marks) and end == len(text) and not body.endswith(("。", "！", "？")):
            continue  # clause cut off at the passage end
        if 8 <= len(body) <= 220:
            out.append((int(m.group(1)), m.start(), m.end() + len(body), body))
    return out


def gen_clauses(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """条文原文 / 条文定位: a numbered clause's number ↔ its text."""
    cl = _clauses(p.text)
    if len(cl) < 2:  # a single stray number is more likely a list item than a numbered 条文
        return []
    out = []
    n, s, e, body = rng.choice(cl)
    q = T.fill(rng, T.CLAUSE_TEXT_Q, book=p.book, n=n, section=sec(p))
    a = T.fill(rng, T.CLAUSE_TEXT_A, book=p.book, n=n, body=body, section=sec(p))
    out.append(make_pair(p, q, a, "条文原文", "clause_text", (s, e), clause=n))
    n, s, e, body = rng.choice(cl)
    head = body if len(body) <= 40 else body[:40] + "……"
    q = T.fill(rng, T.CLAUSE_NO_Q, book=p.book, head=head)
    a = T.fill(rng, T.CLAUSE_NO_A, book=p.book, n=n, body=body, section=sec(p))
    out.append(make_pair(p, q, a, "条文定位", "clause_number", (s, e), clause=n))
    return out


def gen_cloze(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """原文填空: blank out a lexicon term in a key sentence."""
    cands = []
    for s, e, sent in key_sentences(p, 10, 50):
        hits = [(o, t) for o, t in lex.find(sent) if 2 <= len(t) <= 5 and o > 0]
        if hits:
            cands.append((s, e, sent, hits))
    if not cands:
        return []
    s, e, sent, hits = rng.choice(cands)
    o, term = max(hits, key=lambda h: (len(h[1]), rng.random()))
    masked = sent[:o] + "____" + sent[o + len(term) :]
    q = T.fill(rng, T.CLOZE_Q, book=p.book, masked=masked)
    a = T.fill(rng, T.CLOZE_A, term=term, s=sent, book=p.book)
    return [make_pair(p, q, a, "原文填空", "cloze", (s, e), term=term)]


def gen_lexicon(p: Passage, rng: random.Random, lex: Lexicon) -> list[Pair]:
    """名词概念 / 术语语境: a lexicon term → the passage's sentence that defines (or else uses) it."""
    out: list[Pair] = []
    for m in _DEFINE.finditer(p.text):
        term, sent = m.group(2).rstrip("也矣焉耳"), trim_unbalanced(m.group(1).strip())
        if len(term) < 2:
            continue
        if cjk_ratio(sent) > 0.8 and not re.search(r"何|？|乎", sent):
            q = T.fill(rng, T.DEFINE_Q, term=term, book=p.book)
            a = T.fill(rng, T.DEFINE_A, term=term, book=p.book, s=sent)
            out.append(make_pair(p, q, a, "名词概念", "lexicon_define", (m.start(1), m.end(1)), term=term))
    for m in _ZHE_YE.finditer(p.text):
        term, gloss = m.group(1), m.group(2)
        if term in lex.terms:
            sent = f"{term}者，{gloss}也。"
            q = T.fill(rng, T.DEFINE_Q, term=term, book=p.book)
            a = T.fill(rng, T.DEFINE_A, term=term, book=p.book, s=sent)
            out.append(make_pair(p, q, a, "名词概念", "lexicon_define", (m.start(1), m.end()), term=term))
    if len(out) > 2:
        out = rng.sample(out, 2)
    # usage: a rarer (longer) term with the sentence that uses it
    uses = [(s, e, sent, t) for s, e, sent in key_sentences(p, 10, 90) if "（" not in sent and "，" in sent
            for _, t in lex.find(sent) if len(t) >= 3]
    if uses:
        s, e, sent, term = max(uses, key=lambda u: (len(u[3]), rng.random()))
        q = T.fill(rng, T.USAGE_Q, term=term, book=p.book, section=sec(p))
        a = T.fill(rng, T.USAGE_A, term=term, book=p.book, section=sec(p), s=sent.strip())
        out.append(make_pair(p, q, a, "术语语境", "lexicon_usage", (s, e), term=term))
    return out


Generator = Callable[[Passage, random.Random, Lexicon], list[Pair]]
GENERATORS: dict[str, Generator] = {
    "attribution": gen_attribution, "section_book": gen_section_book, "clauses": gen_clauses,
    "formula": gen_formula, "herb": gen_herb, "cloze": gen_cloze, "lexicon": gen_lexicon,
}
"""Offline generators by name (InstructConfig.generators picks among these plus `teacher`)."""


def pick_diverse(cands: list[Pair], k: int, rng: random.Random) -> list[Pair]:
    """Up to k pairs, round-robin over task types in random order (structure-rich types first)."""
    by: dict[str, list[Pair]] = {}
    for c in cands:
        by.setdefault(c.task_type, []).append(c)
    for v in by.values():
        rng.shuffle(v)
    order = sorted(by, key=lambda t: (t in ("出处", "篇名归属", "术语语境"), rng.random()))
    out: list[Pair] = []
    while len(out) < k and any(by.values()):
        for t in order:
            if by[t] and len(out) < k:
                out.append(by[t].pop())
    return out


def generate_offline(passages: Iterable[Passage], names: list[str], lex: Lexicon, per_passage: int,
                     seed: int = 0) -> Iterable[Pair]:
    """Run the named generators over the passages; yield up to `per_passage` diverse pairs per passage."""
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown offline generator(s) {unknown}; known: {sorted(GENERATORS)}")
    seen_sections: set[tuple[str, str]] = set()
    for p in passages:
        rng = random.Random(f"{seed}:{p.id}")
        cands: list[Pair] = []
        for n in names:
            if n == "section_book":
                if (p.book, p.section) in seen_sections:
                    continue
                seen_sections.add((p.book, p.section))
            cands.extend(GENERATORS[n](p, rng, lex))
        yield from pick_diverse(cands, per_passage, rng)
