"""Retrieval-augmented training records: a share of the refined pairs is asked *with* the passages the retriever
returns for the question (built by `qihuang.rag`, exactly as serving builds its prompts); the answer opens with the
gold passage's source, `据《书名·篇名》：`. Some records lose their gold passage and answer that the passages do not say;
some general (non-classics) questions are asked with the passages retrieved for them and answered the same way."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from qihuang import rag
from qihuang.instruct.records import Pair, Passage
from qihuang.instruct.settings import InstructConfig
from qihuang.retrieval import Passage as IndexPassage
from qihuang.retrieval import PassageIndex


def index_passage(p: Passage) -> IndexPassage:
    """A corpus passage as the retriever holds it."""
    return IndexPassage(id=p.id, book=p.book, section=p.section, text=p.text, dynasty=p.dynasty,
                        category=p.category, author=p.author, start=p.start, end=p.end)


def _window_holds_span(gold: IndexPassage, question: str, span: tuple[int, int], chars: int) -> bool:
    """Whether the part of the gold passage shown in the prompt holds at least half of the supporting span."""
    s, e = rag.passage_window(gold, question, chars)
    a, b = span
    if b <= a:
        return True
    return min(b, e) - max(a, s) >= (b - a) / 2


def _record(pair: Pair, gold: Passage, shown: list[IndexPassage], answer: str, kind: str,
            cfg: InstructConfig) -> dict[str, Any]:
    messages, _ = rag.rag_messages([{"role": "user", "content": pair.question}], shown, cfg.passage_chars)
    meta = pair.meta(gold)
    meta.update({"rag": kind, "passages": [p.id for p in shown], "turns": 1, "task_types": [pair.task_type]})
    return {"conversations": [{"from": "human", "value": messages[-1]["content"]}, {"from": "gpt", "value": answer}],
            "meta": meta}


def _missing(pair: Pair, hits: list[IndexPassage], k: int) -> list[IndexPassage]:
    """Distractors only: retrieved passages of other books (none that could hold the answer)."""
    return [p for p in hits if p.book != pair.book][:k]


def _with_gold(pair: Pair, hits: list[IndexPassage], gold: IndexPassage, k: int,
               rng: random.Random) -> tuple[list[IndexPassage], str]:
    """The retriever's top k when they hold the gold passage (kind `retrieved`); otherwise the top k - 1 with the
    gold passage put at a random rank (kind `inserted`), so the model also reads it among distractors."""
    top = hits[:k]
    if any(p.id == gold.id for p in top):
        return top, "retrieved"
    top = [p for p in top if p.id != gold.id][: k - 1]
    top.insert(rng.randint(0, len(top)), gold)
    return top, "inserted"


def augment(pairs: list[Pair], passages: dict[str, Passage], index: PassageIndex, cfg: InstructConfig
            ) -> tuple[list[dict[str, Any]], list[Pair], dict[str, Any]]:
    """(records with passages, pairs left closed-book, stats). `rag_ratio` of the pairs get passages; of those,
    `rag_missing_ratio` get distractors only and the NOT_COVERED answer. A pair whose supporting text would not be
    in the shown window stays closed-book (counted as `window_miss`)."""
    rng = random.Random(f"{cfg.seed}:rag")
    k = cfg.passages_k
    records: list[dict[str, Any]] = []
    closed: list[Pair] = []
    kinds: Counter[str] = Counter()
    for pair in pairs:
        gold_src = passages.get(pair.passage_id)
        if gold_src is None or rng.random() >= cfg.rag_ratio:
            closed.append(pair)
            continue
        hits = [h.passage for h in rag.retrieve(index, pair.question, 3 * k)]
        if rng.random() < cfg.rag_missing_ratio:
            shown = _missing(pair, hits, k)
            if not shown:
                closed.append(pair)
                kinds["no_distractor"] += 1
                continue
            records.append(_record(pair, gold_src, shown, rag.NOT_COVERED, "missing", cfg))
            kinds["missing"] += 1
            continue
        gold = index_passage(gold_src)
        if not _window_holds_span(gold, pair.question, pair.span, cfg.passage_chars):
            closed.append(pair)
            kinds["window_miss"] += 1
            continue
        shown, kind = _with_gold(pair, hits, gold, k, rng)
        answer = rag.cite_answer(pair.answer, gold)
        records.append(_record(pair, gold_src, shown, answer, kind, cfg))
        kinds[kind] += 1
    stats = {"rag_records": len(records), "closed_book_pairs": len(closed), "by_kind": dict(kinds),
             "rag_by_task_type": dict(Counter(r["meta"]["task_type"] for r in records).most_common())}
    return records, closed, stats


def _offtopic_record(rec: dict[str, Any], index: PassageIndex, cfg: InstructConfig) -> dict[str, Any] | None:
    """A general record's last question asked with the passages retrieved for it, answered NOT_COVERED (None when
    nothing is retrieved). Earlier turns stay as they were."""
    conv = rec["conversations"]
    last = max((i for i, m in enumerate(conv) if m["from"] == "human"), default=None)
    if last is None:
        return None
    question = conv[last]["value"]
    shown = [h.passage for h in rag.retrieve(index, question, cfg.passages_k)]
    if not shown:
        return None
    turn = rag.rag_user_turn(question, shown, cfg.passage_chars)
    meta = {**rec.get("meta", {}), "rag": "offtopic", "passages": [p.id for p in shown]}
    return {"conversations": conv[:last] + [{"from": "human", "value": turn}, {"from": "gpt", "value": rag.NOT_COVERED}],
            "meta": meta}


def decline_offtopic(records: list[dict[str, Any]], index: PassageIndex, cfg: InstructConfig
                     ) -> tuple[list[dict[str, Any]], int]:
    """(records, how many were turned): `rag_offtopic_ratio` of the general records (meta source `general`) asked
    with the passages the retriever returns for their question and answered NOT_COVERED; order kept."""
    rng = random.Random(f"{cfg.seed}:offtopic")
    out: list[dict[str, Any]] = []
    turned = 0
    for rec in records:
        new = None
        if rec.get("meta", {}).get("source") == "general" and rng.random() < cfg.rag_offtopic_ratio:
            new = _offtopic_record(rec, index, cfg)
        turned += new is not None
        out.append(new or rec)
    return out, turned
