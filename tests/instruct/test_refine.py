"""Refine filters return (keep, reason); duplicates and near duplicates go; balancing hits target proportions."""

from __future__ import annotations

from collections import Counter

import pytest

from qihuang.instruct.records import Pair
from qihuang.instruct.refine import allocate, balance, check_pair, refine
from qihuang.instruct.settings import RefineSettings

CTX = "《拟诊法心法》论脉浮\n浮脉者，举之有余，按之不足，如水漂木也。浮而有力为表实，浮而无力为表虚。浮紧者伤寒，浮缓者伤风。"
RP = RefineSettings()


def mk(q: str, a: str, t: str = "名词概念", pid: str = "p1", cat: str = "诊法") -> Pair:
    return Pair(question=q, answer=a, passage_id=pid, book="拟诊法心法", section="论脉浮", category=cat,
                task_type=t, generator="test")


@pytest.mark.parametrize(("q", "a", "reason"), [
    ("", "浮而有力为表实。", "schema:missing_question"),
    ("What is a floating pulse?", "浮而有力为表实。", "not_chinese_question"),
    ("浮脉主何证？", "A floating pulse means an exterior pattern.", "not_chinese_answer"),
    ("浮？", "浮而有力为表实。", "question_too_short"),
    ("浮脉主何证？", "浮而有力为表实。" * 300, "answer_too_long"),
    ("浮而有力为表实对吗？", "浮而有力为表实", "answer_copies_question"),
    ("浮脉主何证？", "抱歉，作为一个AI，我无法回答这个问题。", "refusal_or_boilerplate"),
    ("浮脉主何证？", "浮而有力为表实（见原文。", "unbalanced_brackets"),
    ("浮脉主何证？", "该病主要依靠现代实验室检测确诊，并配合抗生素治疗。", "not_grounded"),
])
def test_each_filter_names_its_reason(q: str, a: str, reason: str) -> None:
    assert check_pair(mk(q, a), CTX, RP) == (False, reason)


def test_good_pair_kept_with_scores() -> None:
    p = mk("浮脉主何证？", "浮而有力为表实，浮而无力为表虚。")
    assert check_pair(p, CTX, RP) == (True, "")
    assert p.grounding is not None and p.grounding > 0.9
    assert p.difficulty is not None and 0 <= p.difficulty <= 1
    hard = mk("浮脉主何证？", "浮而有力为表实，浮而无力为表虚。" * 5, t="比较辨析")
    check_pair(hard, CTX, RP)
    assert hard.difficulty > p.difficulty


def test_unknown_passage_rejected() -> None:
    assert check_pair(mk("浮脉主何证？", "浮而有力为表实。"), None, RP) == (False, "unknown_passage")


@pytest.mark.parametrize("workers", [1, 2])
def test_exact_and_near_duplicates(workers: int) -> None:
    a = mk("浮脉主何证？请依据原文回答。", "浮而有力为表实，浮而无力为表虚，浮紧者伤寒。")
    exact = mk("浮脉主何证？请依据原文回答！", "浮而有力为表实。")
    near = mk("浮脉主何证？请依据原文回答呀。", "浮而有力为表实，浮而无力为表虚，浮紧者伤寒。")
    other = mk("浮紧之脉主何病？", "浮紧者伤寒，浮缓者伤风。")
    kept, rejects = refine([a, exact, near, other], {"p1": CTX}.get, RP, workers=workers, chunk=2)
    assert [k.question for k in kept] == [a.question, other.question]
    assert Counter(r["reason"] for r in rejects) == {"duplicate_question": 1, "near_duplicate": 1}


def test_allocate_water_fills() -> None:
    assert allocate({"a": 100, "b": 100}, 100, {}) == {"a": 50, "b": 50}
    assert allocate({"a": 10, "b": 100}, 100, {}) == {"a": 10, "b": 90}
    got = allocate({"a": 100, "b": 100, "c": 100}, 100, {"a": 0.5})
    assert got["a"] == 50 and got["b"] + got["c"] == 50


def test_balance_caps_type_share() -> None:
    pairs = [mk(f"问题{i}", "答", t="出处") for i in range(80)] + [mk(f"问{i}", "答", t="方剂组成") for i in range(20)]
    kept, dropped = balance(pairs, lambda p: p.task_type, len(pairs), {}, 0.5, 0, "balance:task_type")
    c = Counter(p.task_type for p in kept)
    assert c["方剂组成"] == 20 and c["出处"] == 20
    assert len(dropped) == 60 and all(d["reason"] == "balance:task_type" for d in dropped)


def test_batched_signatures_equal_datasketch() -> None:
    import zlib

    from datasketch import MinHash

    from qihuang.textmetrics import content_chars
    from qihuang.instruct.refine import _shingles, signatures

    texts = [("浮脉主何证", "浮而有力为表实浮而无力为表虚"), ("何谓肝厥", "阴虚阳亢"), ("问", "答")]
    sigs = signatures(texts, 64)
    for (q, a), sig in zip(texts, sigs):
        m = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=zlib.crc32)
        m.update_batch([s.encode() for s in _shingles(content_chars(q), content_chars(a))])
        assert (m.hashvalues == sig).all()


def test_refine_grounding_equals_public_score() -> None:
    from qihuang.textmetrics import grounding_score

    p = mk("浮脉主何证？", "脉浮而无力者属表虚，浮紧的是伤寒。")
    check_pair(p, CTX, RP)
    assert p.grounding == pytest.approx(grounding_score(p.answer, CTX))
