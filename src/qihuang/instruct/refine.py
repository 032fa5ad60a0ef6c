"""Refine: small filters returning `(keep, reason)`, grounding, difficulty, exact + MinHash near-dup, balancing.

Per-pair checks (schema, language, length, copy, boilerplate, grounding) and MinHash signatures run in worker
processes over chunks; exact and near-duplicate removal then runs in input order in the parent so the result is
deterministic whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from qihuang.instruct.records import Pair, reject
from qihuang.instruct.settings import RefineSettings
from qihuang.minhash import NearDupIndex
from qihuang.textmetrics import char_ngrams, content_chars, lcs_length, passage_index

Check = tuple[bool, str]
_BOILER = re.compile(
    r"作为(?:一个|一名)?(?:AI|人工智能|语言模型)|我(?:无法|不能)(?:回答|提供|确定)|抱歉|对不起|无法回答|"
    r"(?:原文|文中|段落|文本)(?:中)?(?:没有|未)(?:提及|提到|涉及|说明)|请提供更多|as an AI|I'm sorry|I cannot|"
    r"无法从(?:原文|文中)|不知道|超出了我的"
)
TYPE_WEIGHT: dict[str, float] = {
    "篇名归属": 0.1, "出处": 0.2, "药物性味": 0.2, "原文填空": 0.3, "药物主治": 0.3, "条文原文": 0.4,
    "条文定位": 0.4, "方剂组成": 0.4, "方剂煎服": 0.4, "方证主治": 0.5, "术语语境": 0.4, "名词概念": 0.5,
    "原文释义": 0.7, "治法": 0.8, "病机证候": 0.9, "比较辨析": 1.0, "追问": 0.6,
}
"""Base difficulty per task type (used by `difficulty`); unknown types count 0.5."""


def check_schema(p: Pair) -> Check:
    for name in ("question", "answer", "passage_id", "task_type"):
        v = getattr(p, name)
        if not isinstance(v, str) or not v.strip():
            return False, f"schema:missing_{name}"
    return True, ""


def check_boilerplate(p: Pair) -> Check:
    if _BOILER.search(p.answer):
        return False, "refusal_or_boilerplate"
    return True, ""


def check_brackets(p: Pair) -> Check:
    for s in (p.question, p.answer):
        if s.count("（") != s.count("）") or s.count("“") != s.count("”"):
            return False, "unbalanced_brackets"
    return True, ""


_LATIN = re.compile(r"[A-Za-z0-9]")


def _check(p: Pair, context: str | None, rp: RefineSettings) -> tuple[str, str, str]:
    """(reason or "", cleaned question, cleaned answer): all checks, each string cleaned once (hot path)."""
    ok, reason = check_schema(p)
    if not ok:
        return reason, "", ""
    qc, ac = content_chars(p.question), content_chars(p.answer)
    for name, c in (("question", qc), ("answer", ac)):
        if not c:
            return f"empty_{name}", qc, ac
        if (len(c) - len(_LATIN.findall(c))) / len(c) < rp.min_cjk:
            return f"not_chinese_{name}", qc, ac
    if len(qc) < rp.min_question:
        return "question_too_short", qc, ac
    if len(qc) > rp.max_question:
        return "question_too_long", qc, ac
    if len(ac) < rp.min_answer:
        return "answer_too_short", qc, ac
    if len(ac) > rp.max_answer:
        return "answer_too_long", qc, ac
    if len(ac) >= 2:
        qg = set(char_ngrams(qc, 2))
        grams = char_ngrams(ac, 2)
        if sum(g in qg for g in grams) >= 0.9 * len(grams):
            return "answer_copies_question", qc, ac
    for fn in (check_boilerplate, check_brackets):
        ok, reason = fn(p)
        if not ok:
            return reason, qc, ac
    if context is None:
        return "unknown_passage", qc, ac
    clean, index = passage_index(context, rp.grounding_n)
    ag = char_ngrams(ac, rp.grounding_n)
    ng = sum(g in index for g in ag) / len(ag) if clean else 0.0
    lcs = lcs_length(ac, clean) / len(ac) if ng > 0 else 0.0
    p.grounding = max(0.0, min(1.0, 0.5 * ng + 0.5 * lcs))
    if p.grounding < rp.grounding_threshold:
        return "not_grounded", qc, ac
    length = min(1.0, len(ac) / 300)
    p.difficulty = round(0.4 * length + 0.35 * TYPE_WEIGHT.get(p.task_type, 0.5) + 0.25 * (1 - lcs), 4)
    return "", qc, ac


def check_pair(p: Pair, context: str | None, rp: RefineSettings) -> Check:
    """All per-pair checks in order (schema, language, length, copy, boilerplate, brackets, grounding);
    the first failure's reason. Sets `p.grounding` and `p.difficulty` when it gets that far."""
    reason, _, _ = _check(p, context, rp)
    return not reason, reason


def normalize(text: str) -> str:
    """Content characters only, for exact-duplicate keys and shingles."""
    return content_chars(text).lower()


def _shingles(qc: str, ac: str) -> set[str]:
    q, a = qc.lower(), ac.lower()
    sh = set(char_ngrams(q, 3)) | {"A" + g for g in char_ngrams(a, 3)}
    return sh or {"∅"}


def signatures(cleaned: list[tuple[str, str]], num_perm: int) -> np.ndarray:
    """MinHash signatures (rows) over character 3-grams of question + answer (crc32 shingle hashes, seed 1), for a
    whole batch at once (`qihuang.minhash.signatures`: datasketch's affine32 MinHash with `hashfunc=zlib.crc32`)."""
    from qihuang.minhash import signatures as minhash_rows

    hashes = [np.fromiter((zlib.crc32(s.encode()) for s in _shingles(qc, ac)), dtype=np.uint32)
              for qc, ac in cleaned]
    return minhash_rows(hashes, num_perm, seed=1)


Chunk = tuple[list[Pair], dict[str, str], RefineSettings]


Result = tuple[list[tuple[str, str, float | None, float | None]], np.ndarray]


def _key(qc: str) -> str:
    return hashlib.blake2b(qc.lower().encode(), digest_size=12).hexdigest()


def _work(args: Chunk) -> Result:
    """Worker: per pair (reason, exact-dup key, grounding, difficulty), plus the signature matrix of the pairs
    that passed (rows in order). Only these small values travel back to the parent."""
    pairs, contexts, rp = args
    rows: list[tuple[str, str, float | None, float | None]] = []
    good: list[tuple[str, str]] = []
    for p in pairs:
        reason, qc, ac = _check(p, contexts.get(p.passage_id), rp)
        rows.append((reason, "" if reason else _key(qc), p.grounding, p.difficulty))
        if not reason:
            good.append((qc, ac))
    return rows, signatures(good, rp.num_perm)


def _chunks(pairs: Iterable[Pair], context_of: Callable[[str], str | None], size: int,
            rp: RefineSettings) -> Iterator[Chunk]:
    buf: list[Pair] = []
    for p in pairs:
        buf.append(p)
        if len(buf) >= size:
            yield buf, {q.passage_id: c for q in buf if (c := context_of(q.passage_id)) is not None}, rp
            buf = []
    if buf:
        yield buf, {q.passage_id: c for q in buf if (c := context_of(q.passage_id)) is not None}, rp


def _bounded_map(pool: ProcessPoolExecutor | None, jobs: Iterator[Chunk], ahead: int
                 ) -> Iterator[tuple[Chunk, Result]]:
    """Ordered map that keeps at most `ahead` chunks in flight (memory stays flat on large inputs)."""
    if pool is None:
        for job in jobs:
            yield job, _work(job)
        return
    pending: deque[tuple[Chunk, Future[Result]]] = deque()
    for job in jobs:
        pending.append((job, pool.submit(_work, job)))
        if len(pending) >= ahead:
            j, f = pending.popleft()
            yield j, f.result()
    while pending:
        j, f = pending.popleft()
        yield j, f.result()


def refine(pairs: Iterable[Pair], context_of: Callable[[str], str | None], rp: RefineSettings, workers: int = 1,
           chunk: int = 2000, on_progress: Callable[[int], None] | None = None) -> tuple[list[Pair], list[dict]]:
    """Filter pairs; returns (kept, rejects). Duplicates keep the first occurrence in input order."""
    kept: list[Pair] = []
    rejects: list[dict] = []
    seen: set[str] = set()
    near_dups = NearDupIndex(rp.dedup_threshold, rp.num_perm, seed=1)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for (chunk_pairs, _, _), (rows, sigs) in _bounded_map(pool, _chunks(pairs, context_of, chunk, rp),
                                                              2 * workers):
            i_sig = 0
            for p, (reason, key, grounding, diff) in zip(chunk_pairs, rows):
                p.grounding, p.difficulty = grounding, diff
                if reason:
                    rejects.append(reject(p, reason))
                    continue
                sig = sigs[i_sig]
                i_sig += 1
                if key in seen:
                    rejects.append(reject(p, "duplicate_question"))
                    continue
                seen.add(key)
                near = near_dups.nearest(sig)
                if near is not None:
                    rejects.append(reject(p, "near_duplicate", duplicate_of=kept[int(near[0])].question))  # type: ignore[call-overload]
                    continue
                near_dups.insert(len(kept), sig)
                kept.append(p)
            if on_progress:
                on_progress(len(rows))
    finally:
        if pool:
            pool.shutdown()
    return kept, rejects


def allocate(avail: dict[str, int], budget: int, targets: dict[str, float]) -> dict[str, int]:
    """Water-filling: split `budget` over groups in proportion to `targets` (missing → equal), capped by `avail`."""
    groups = [g for g in avail if avail[g] > 0]
    weight = {g: targets.get(g, 0.0) if targets else 1.0 for g in groups}
    if targets:
        rest = [g for g in groups if g not in targets]
        left = max(0.0, 1.0 - sum(targets.values()))
        for g in rest:
            weight[g] = left / len(rest) if rest else 0.0
    alloc = {g: 0 for g in groups}
    remaining = min(budget, sum(avail.values()))
    open_ = [g for g in groups if weight[g] > 0]
    while remaining > 0 and open_:
        total_w = sum(weight[g] for g in open_)
        share = {g: remaining * weight[g] / total_w for g in open_}
        give = {g: min(avail[g] - alloc[g], math.floor(share[g])) for g in open_}
        if sum(give.values()) == 0:  # hand out the last few one by one, largest share first
            for g in sorted(open_, key=lambda k: -share[k])[:remaining]:
                give[g] = 1
        for g, n in give.items():
            alloc[g] += n
            remaining -= n
        open_ = [g for g in open_ if alloc[g] < avail[g]]
    return alloc


def balance(pairs: list[Pair], key: Callable[[Pair], str], budget: int, targets: dict[str, float],
            max_share: float, seed: int, reason: str) -> tuple[list[Pair], list[dict]]:
    """Downsample groups to `targets` proportions within `budget` and to at most `max_share` of the kept total."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        groups[key(p)].append(p)
    alloc = allocate({g: len(v) for g, v in groups.items()}, budget, targets)
    if max_share < 1.0 and len(alloc) > 1:
        for _ in range(4 * len(alloc)):  # cap the largest group until every group is within max_share
            total = sum(alloc.values())
            g = max(alloc, key=lambda k: alloc[k])
            others = total - alloc[g]
            if alloc[g] <= max_share * total + 1e-9 or others == 0:
                break
            alloc[g] = max(1, min(alloc[g], math.floor(max_share / (1 - max_share) * others)))
    rng = random.Random(seed)
    kept, dropped = [], []
    for g, v in groups.items():
        order = sorted(v, key=lambda p: (-(p.grounding or 0.0), rng.random()))
        n = alloc.get(g, 0)
        kept.extend(order[:n])
        dropped.extend(reject(p, reason) for p in order[n:])
    kept_ids = {id(p) for p in kept}
    return [p for p in pairs if id(p) in kept_ids], dropped


def reasons(rejects: Iterable[dict]) -> Counter[str]:
    """Reject counts by reason."""
    return Counter(r["reason"] for r in rejects)
