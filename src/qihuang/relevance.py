"""Whether the classics speak to a question at all, and which retrieved passage an answer should cite: the gate in
front of retrieval-augmented answers (serve, chat, eval all call it through `rag.ground`)."""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.retrieval import Hit, Passage
from qihuang.scope import marks_place
from qihuang.textmetrics import SENTENCE_MARK, sentence_end_before

GENERIC_FREQ = 2000
"""A word whose frequency in jieba's dictionary of everyday modern Chinese is at least this is no evidence of a
question about the classics (作用 22,078, 太阳 5,044; 感冒 604, 黄芪 114, 桂枝 23 stay evidence)."""
QUOTE_CHARS = 5
"""A question whose CJK text shares a run of this many characters with a retrieved passage (its section name or
text) quotes the classics."""
MAX_TERM = 12
"""Longest domain term looked for."""
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_NUMBERED = re.compile(r"^(?:[（(][^）)]{1,6}[）)]|第[^章节篇卷]{1,6}[章节篇卷]|[一二三四五六七八九十百]+[、．.])")
_GENERIC_SECTIONS = frozenset("序 自序 自叙 原序 凡例 目录 跋 后序 题辞 题词 总论 附录 附方 提要 引言 前言 后记 卷首".split())


def cjk(text: str) -> str:
    """The CJK characters of `text`, joined."""
    return "".join(_CJK_RUN.findall(text))


def longest_shared(a: str, b: str) -> int:
    """Length of the longest run of characters `a` and `b` share (a quote of one in the other)."""
    best = 0
    for i in range(len(a)):
        j = i + best + 1
        while j <= len(a) and a[i:j] in b:
            best = j - i
            j += 1
    return best


class DomainTerms:
    """Terms of the classics' own vocabulary (the TCM lexicon, and the library's section names: herbs, formulas,
    chapter names), without the words everyday modern Chinese uses as often; `find` lists those a text contains."""

    def __init__(self, terms: Iterable[str], generic: dict[str, int] | None = None) -> None:
        freq = generic or {}
        self.by_head: dict[str, set[str]] = {}
        for t in terms:
            t = t.strip()
            if 2 <= len(t) <= MAX_TERM and cjk(t) == t and freq.get(t, 0) < GENERIC_FREQ \
                    and t not in _GENERIC_SECTIONS and not t.startswith("卷"):
                self.by_head.setdefault(t[:2], set()).add(t)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_head.values())

    def begins(self, text: str) -> str | None:
        """A longer term that `text` begins (赤游 → 赤游丹), or None."""
        longer = [t for t in self.by_head.get(text[:2], ()) if len(t) > len(text) and t.startswith(text)]
        return min(longer, key=lambda t: (len(t), t)) if longer else None

    def find(self, text: str) -> list[str]:
        """Every term `text` contains, longest first."""
        found = {t for i in range(len(text) - 1) for t in self.by_head.get(text[i:i + 2], ()) if text.startswith(t, i)}
        return sorted(found, key=lambda t: (-len(t), t))


def section_terms(names: Iterable[str]) -> set[str]:
    """Headwords of section names: each level, its numbering (（十一）, 第三章, 一、) taken off."""
    out: set[str] = set()
    for name in names:
        for part in re.split(r"[·/]", name):
            part = _NUMBERED.sub("", part.strip())
            part = part.removesuffix("方").removesuffix("论") if len(part) > 3 else part
            if part:
                out.add(part)
    return out


def _lexicon_terms() -> list[str]:
    from qihuang.retrieval import _lexicon_path

    path = _lexicon_path()
    if path is None or not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [line.split()[0] for line in fh if line.strip()]


def _generic_freq() -> dict[str, int]:
    from qihuang.bm25 import jieba_segmenter

    return dict(jieba_segmenter(None).FREQ)


_TERMS_LOCK = threading.Lock()
_TERMS: weakref.WeakKeyDictionary[Any, DomainTerms] = weakref.WeakKeyDictionary()


def domain_terms(index: Any) -> DomainTerms:
    """The domain terms of an index (lexicon + its section headwords), built once per index object."""
    with _TERMS_LOCK:
        if index not in _TERMS:
            _TERMS[index] = DomainTerms([*_lexicon_terms(), *section_terms(index.sections.names)], _generic_freq())
        return _TERMS[index]


COMPOSITION_ASKS = re.compile(r"组成|由哪些|哪些药|用药|配伍")
"""A question asking a formula's ingredients: entries listing the most herbs in their head come first."""
HEAD_CHARS = 80
"""Characters of an entry's opening passage read as its head."""
DOSE = re.compile(r"[一二三四五六七八九十百半两\d]+\s*(?:两|钱|分|枚|升|斤|克|g)")
"""A dose (三两, 二钱, 十二枚): what a formula's ingredient list is made of."""
ENTRY_ASKS = re.compile(r"组成|由哪些|性味|药性|气味|味道|寒热属性|功效|功用|效用|作用|主治|治什么|用法|煎服|服法")
"""What a question asks of an entry as a whole (its head says it), unlike a term or sentence inside it."""
_BOOK_NAMES = re.compile(r"《[^《》]*》")
"""A book's name in a question (an aspect word inside it, 《药性赋》, is not asked)."""


def section_head(passage: Passage) -> str:
    """The last level of `passage`'s section (卷一/黄连 → 黄连; "" without a section)."""
    return re.split(r"[·/]", passage.section)[-1].strip() if passage.section else ""


def entry_of(passage: Passage, query: str) -> bool:
    """Whether `passage` is the entry of a formula or herb a plain question asks about as a whole (桂枝汤由哪些药物
    组成？ 《本草思辨录》记载楝实的药性如何？): the question asks an ENTRY_ASKS aspect outside the book it names
    (《》), marks no section (「」), names the section's last level (less 方) and quotes nothing of it (no
    QUOTE_CHARS-character run)."""
    if "「" in query or not ENTRY_ASKS.search(_BOOK_NAMES.sub("", query)):
        return False
    head = section_head(passage)
    head = head.removesuffix("方") if len(head) > 2 else head
    text = cjk(query)
    return len(head) >= 2 and head in text and longest_shared(text, cjk(passage.text)) < QUOTE_CHARS


SOURCE_ASKS = re.compile(r"出自|出处|哪部|哪本|哪一部|收在|收于|篇章|典籍|著作")
"""A question asking which book something belongs to."""


def section_asked(passage: Passage, query: str) -> bool:
    """Whether `query` asks which book the section of `passage` belongs to, naming it (「卷四·阿胶」是哪部医书中的
    篇章？): SOURCE_ASKS, the section's last level named (≥ 2 characters) and nothing of the text quoted (no
    QUOTE_CHARS-character run beyond the name) — the section's opening then says what it is, not a sentence that
    happens to share the name's characters (「故曰五苓散。」 for 《五苓散方》这一篇收在哪本古籍里)."""
    if not SOURCE_ASKS.search(query):
        return False
    head = section_head(passage)
    text = cjk(query.replace(f"《{passage.book}》", "|"))  # the book named is no section (《洄溪医案》's one section)
    return len(head) >= 2 and head in text and longest_shared(text.replace(head, "|"), cjk(passage.text)) < QUOTE_CHARS


def quote_span(passage: Passage, query: str, max_chars: int) -> tuple[int, int]:
    """(start, end) of the part of `passage` to show or quote for `query`: an entry the question names (`entry_of`)
    or a section it asks the book of (`section_asked`) from its start — its head is the composition, 性味 or 主治,
    not the sentence sharing the question's other words (性味, 功效); else the sentence run matching the question
    best (`retrieval.best_span`), with the sentences after
    it when the question asks what it means and it only repeats the question (「天地之道也。」 for 阴阳者天地之道也
    是什么意思 — the note after it explains; for 出处 questions the repeated sentence is the answer).
    Whole sentences where they fit."""
    from qihuang.retrieval import best_span, char_bigrams

    text = passage.text
    if entry_of(passage, query) or section_asked(passage, query):
        return 0, _opening(text, max_chars)
    asked = what_is_asked(passage, query)
    s, e = best_span(text, asked, max_chars, rank=sentence_rank(asked))
    said = char_bigrams(text[s:e])
    if MEANING_ASKS.search(query) and said and len(said & char_bigrams(query)) >= ECHO_SHARE * len(said):
        return s, _whole_sentences(text, s, max_chars)
    return s, e


_PLACES = re.compile(r"《[^《》]*》|「[^「」]*」")


def what_is_asked(passage: Passage, query: str) -> str:
    """`query` without the names of where to look: book titles (《…》) and the passage's section set in 「」 as a path
    (「卷之三·春伤于风夏生飧泄大意·洞泄」, two levels or more, or the book's name) — they say which passage, not which
    of its sentences (in 《时病论》「…·洞泄」中是怎样论述“下利清谷”的, 「…乃为洞泄。」 is not the sentence on 下利清谷).
    A single name in 「」 stays: it is the term asked about (《时病论》中「寒疟」指的是什么？)."""
    levels = {n for n in re.split(r"[/·]", passage.section) if n}

    def place(m: re.Match[str]) -> str:
        name = m.group()[1:-1]
        if m.group().startswith("《"):
            return "|"
        parts = [n for n in re.split(r"[/·]", name) if n]
        located = name == passage.book or (len(parts) >= 2 and all(n in levels for n in parts))
        return "|" if located else m.group()

    return _PLACES.sub(place, query)


_MARKED = re.compile(r"[“「『]([^“”「」『』|]{2,})[”」』]")


def marked_terms(query: str) -> list[str]:
    """What a question sets in quotation marks (“下利清谷”, 「赤游」, a quoted sentence), without the marks that end
    its clauses: a sentence holding them is the one asked about (`retrieval.best_span`'s `prefer`)."""
    return [t for t in (m.strip("。，；：、？！ ") for m in _MARKED.findall(query)) if len(t) >= 2]


DEFINITION_ASKS = re.compile(r"指的是什么|什么叫|何谓|何为|什么是|是什么意思|什么意思|含义|界定|定义")
"""A question asking what a term is: the sentence that defines it answers."""
NAMING = "(?:名为|名曰|谓之|是为|命曰)"
"""The verbs by which the classics name what a sentence has described (「…身热，名曰赤游」): the one list that the
sentence ranking here and the offline definition questions (`instruct.offline`) both read."""
_DEFINES = (re.compile(r"([\u4e00-\u9fff]{2,6})者[，,]"), re.compile(NAMING + r"([\u4e00-\u9fff]{2,6})"))


def defines_word_of(sentence: str, query: str) -> bool:
    """Whether `sentence` defines a word (two characters or more) that `query` holds, in the classics' own forms:
    「冬温者，冬应寒而反温…」 (X者，…), 「…名曰冬温」 (名为 / 名曰 / 谓之 / 是为 / 命曰 X)."""
    head, tail = _DEFINES
    for m in head.finditer(sentence):  # X者: the word ends at 者
        if any(m.group(1)[-k:] in query for k in range(2, len(m.group(1)) + 1)):
            return True
    return any(m.group(1)[:k] in query for m in tail.finditer(sentence) for k in range(2, len(m.group(1)) + 1))


def sentence_rank(asked: str) -> Callable[[str], int]:
    """How `best_span` ranks a sentence for the question `asked` (`what_is_asked`) before its overlap: one point
    for each term the question marks (`marked_terms`) that the sentence holds, and, where the question asks what a
    term is (DEFINITION_ASKS), one more for a sentence that defines a word of it (`defines_word_of`)."""
    terms = marked_terms(asked)
    define = DEFINITION_ASKS.search(asked) is not None
    return lambda sentence: sum(t in sentence for t in terms) + int(define and defines_word_of(sentence, asked))


MEANING_ASKS = re.compile(r"意思|解释|含义|何谓|何意|指什么|什么是|释义|白话|怎么理解|如何理解")
"""A question asking what a passage or term means (not where it stands)."""
ECHO_SHARE = 0.8
"""A quoted sentence whose characters and bigrams are at least this share the question's only repeats it."""


OPENING_CHARS = 16
"""An entry's or section's opening, as a reader quotes it: its sentences up to the first that ends at least this many
characters in (「伤风之病，即仲景书中风伤卫之证也，诸家已详，可毋细论耳。」; 「公孙冲脉胃心胸。内关阴维下总同。」)."""


def _opening(text: str, max_chars: int) -> int:
    """End of `text`'s opening (OPENING_CHARS): whole sentences, within `max_chars` where they fit."""
    for m in SENTENCE_MARK.finditer(text, 0, min(len(text), max_chars)):
        if m.end() >= OPENING_CHARS:
            return m.end()
    return _whole_sentences(text, 0, max_chars)


def _whole_sentences(text: str, start: int, max_chars: int) -> int:
    """End of the sentences of `text` from `start` that fit in `max_chars`; the cut at `max_chars` when the first
    of them is longer than a quarter of it and no mark comes in time."""
    stop = min(len(text), start + max_chars)
    end = sentence_end_before(text, stop, start)
    return end if end is not None and end - start >= max_chars // 4 else stop


LIBRARY_SPELLINGS = {"黄芪": "黄耆"}
"""Names a reader writes the modern way and the classics another (what retrieval searches for instead): the herb
entries of the library head 黄耆 (13 books), none 黄芪, so 「黄芪的性味」 found no entry of it."""


def library_spelling(query: str) -> str:
    """`query` with LIBRARY_SPELLINGS' modern names written as the classics write them."""
    for modern, classical in LIBRARY_SPELLINGS.items():
        query = query.replace(modern, classical)
    return query


_HEADS: weakref.WeakKeyDictionary[Any, DomainTerms] = weakref.WeakKeyDictionary()


def headword_in(query: str, index: Any) -> str | None:
    """The section headword of the index (a formula, a herb, a chapter name: `section_terms`, less everyday words)
    the question asks about, or None: the longest, the first-written of equal length, and none that is part of the
    aspect asked (寒热 in 牡丹味道和寒热属性怎样？ is what is asked of 牡丹, not the subject)."""
    with _TERMS_LOCK:
        if index not in _HEADS:
            _HEADS[index] = DomainTerms(section_terms(index.sections.names), _generic_freq())
        heads = _HEADS[index]
    text = ENTRY_ASKS.sub("|", cjk(query))  # the aspect asked is no subject
    found = heads.find(text)
    return min(found, key=lambda t: (-len(t), text.find(t))) if found else None


def _quotes(query: str, head: str | None, hit: Hit) -> bool:
    """Whether `query` quotes `hit` (a shared run of QUOTE_CHARS characters) by more than naming `head`: a run
    holding the headword counts when it goes two characters past it (「和解之剂·阴阳水」, not 「小柴胡汤的」)."""
    text = cjk(query)
    if head is None:
        return shared_run(text, hit) >= QUOTE_CHARS
    return (shared_run(cjk(query.replace(head, "|")), hit) >= QUOTE_CHARS
            or shared_run(text, hit) >= max(QUOTE_CHARS, len(head) + 2))


def by_headword(query: str, hits: Sequence[Hit], index: Any, k: int) -> list[Hit]:
    """`hits` (already `quotes_first`), or — when none of them quotes the question and it names a section headword
    without marks (桂枝汤由哪些药物组成？) — the sections of that name first: their opening passages (the entries'
    heads), then their other passages, each searched on the question's other words, then the rest: a formula or herb
    question is answered from the formula's or herb's own entry, not from passages sharing its commonest words."""
    if marks_place(query):
        return list(hits[:k])
    head = headword_in(query, index)
    if any(_quotes(query, head, h) for h in hits):
        return list(hits[:k])
    names = f"「{head}」" + ("" if head is None or head.endswith("方") else f"「{head}方」")  # 桂枝汤 / 桂枝汤方
    mask = index.sections.mask(names) if head is not None else None
    if mask is None:
        return list(hits[:k])
    rest = query.replace(head, " ")
    heads = index.search_within(rest, mask & index.openers, POOL)  # the entries' heads: composition, 性味, 主治
    if COMPOSITION_ASKS.search(query):  # an entry that lists its herbs with doses first (not a commentary)
        heads = sorted(heads, key=lambda h: -len(DOSE.findall(h.passage.text[:HEAD_CHARS])))
    heads = heads[:k]
    merged: list[Hit] = []
    for h in [*heads, *index.search_within(rest, mask, k), *hits]:
        if all(h.passage.id != m.passage.id and h.passage.text != m.passage.text for m in merged):
            merged.append(h)
    return [Hit(h.passage, h.score, rank) for rank, h in enumerate(merged[:k], 1)]


@dataclass(frozen=True)
class Relevance:
    """Whether retrieval found the classics speaking to a question, and the evidence."""

    covered: bool
    """False: the answer is the NOT_COVERED sentence, not a generation citing unrelated passages."""
    reason: str
    """`book 《…》`, `section 「…」`, `term 黄芪`, `quote 治缠喉风…`, or why not."""


MARKED = re.compile(r"[「“\"‘]([^「」“”\"‘’]{2,12})[」”\"’]")
"""A word the question marks as a term (「赤游」, “赤游”)."""


def judge(query: str, hits: Sequence[Hit], index: Any) -> Relevance:
    """A question is about the classics when it names a book or section of the library, uses a term of its
    vocabulary (`DomainTerms`) or marks the beginning of one (「赤游」: 赤游丹), or quotes a retrieved passage
    (`QUOTE_CHARS`); else (and without hits) it is not."""
    if not hits:
        return Relevance(False, "no passage matched")
    if "《" in query and index.scope.mask(query) is not None:
        return Relevance(True, "names a book")
    if marks_place(query) and index.sections.mask(query) is not None:
        return Relevance(True, "names a section")
    text = cjk(query)
    vocab = domain_terms(index)
    terms = vocab.find(text)
    if terms:
        return Relevance(True, f"term {terms[0]}")
    for marked in MARKED.findall(query):  # 「赤游」指的是什么？ — the short name of a term (赤游丹)
        longer = vocab.begins(cjk(marked))
        if longer:
            return Relevance(True, f"term {marked} ({longer})")
    shared = max(shared_run(text, h) for h in hits)
    if shared >= QUOTE_CHARS:
        return Relevance(True, f"quotes {shared} characters of a passage")
    return Relevance(False, "names no book or section of the library, uses none of its terms, quotes none of it")


POOL = 10
"""BM25 candidates `quotes_first` reorders before the top k are kept."""


def shared_run(query_cjk: str, hit: Hit) -> int:
    """Longest run of characters the question shares with a hit's section name or text (memoised: retrieval, the
    gate and the citation choice each ask it of the same hits)."""
    return _shared_run(query_cjk, hit.passage)


@functools.lru_cache(maxsize=4096)
def _shared_run(query_cjk: str, passage: Passage) -> int:
    return longest_shared(query_cjk, cjk(passage.section) + "|" + cjk(passage.text))


def quotes_first(query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
    """The top k of `hits` (BM25's order) with the passages that quote the question (a shared run of at least
    QUOTE_CHARS characters) moved first, longest quote first: a quoted sentence finds the passage that holds it even
    when its characters are common ones. Ranks are renumbered."""
    text = cjk(query)
    runs = [shared_run(text, h) for h in hits]
    order = sorted(range(len(hits)), key=lambda i: (-(runs[i] if runs[i] >= QUOTE_CHARS else 0), i))
    return [Hit(hits[i].passage, hits[i].score, rank) for rank, i in enumerate(order[:k], 1)]


def definitions_first(query: str, hits: Sequence[Hit]) -> list[Hit]:
    """`hits`, or — where the question asks what a term is (DEFINITION_ASKS) — those that define a word of it
    (`defines_word_of`: 「恶寒者，啬啬然增寒也。」) moved first, each group in the retriever's order: BM25 ranks the
    passages that repeat the term most (「伤寒恶寒。…」), not the one that says what it is. Ranks are renumbered."""
    if DEFINITION_ASKS.search(query) is None:
        return list(hits)
    order = sorted(range(len(hits)), key=lambda i: not defines_word_of(hits[i].passage.text, query))
    return [Hit(hits[i].passage, hits[i].score, rank) for rank, i in enumerate(order, 1)]


def openings_first(query: str, hits: Sequence[Hit], index: Any) -> list[Hit]:
    """`hits`, or — where the question asks which book a section it names belongs to (`section_asked`) — the first
    passage of each such hit's section put first (its book's order as retrieved), then the rest: BM25 ranks a later
    passage of a long section on the question's other words (「《卷上·项强》这一篇收在哪本古籍里？」 found 项强's second
    passage), while the section's opening is what shows it (「伤寒项强。何以明之。」). Ranks are renumbered."""
    asked = [h for h in hits if section_asked(h.passage, query)]
    if not asked:
        return list(hits)
    firsts = [Hit(o, h.score, 0) for h in asked if (o := index.opening_of(h.passage)) is not None]
    merged: list[Hit] = []
    for h in [*firsts, *hits]:
        if all(h.passage.id != m.passage.id and h.passage.text != m.passage.text for m in merged):
            merged.append(h)
    return [Hit(h.passage, h.score, rank) for rank, h in enumerate(merged, 1)]


def cited_passage(query: str, hits: Sequence[Hit]) -> Passage | None:
    """The passage an answer cites: the hit sharing the longest run of characters with the question (a quoted
    sentence, a section name), then, where the question asks what a term is (DEFINITION_ASKS), one that defines a
    word of it (「冬温者，冬应寒而反温…」 over a formula's 「治冬温…」), the retriever's rank breaking ties; None
    without hits. Where the question asks which book a section belongs to (`section_asked`), the section's first
    passage among the hits: its opening is the section's, what a reader quotes to show it (「伤寒项强。何以明之。」,
    not a later passage's first line)."""
    if not hits:
        return None
    text = cjk(query)
    define = DEFINITION_ASKS.search(query) is not None
    best = max(hits, key=lambda h: (shared_run(text, h), define and defines_word_of(h.passage.text, query),
                                    -h.rank)).passage
    if not section_asked(best, query):
        return best
    same = [h.passage for h in hits if (h.passage.book, h.passage.section) == (best.book, best.section)]
    return min(same, key=lambda p: p.start)
