"""Knowledge-guided self-QA with a teacher: one request per passage through `TeacherClient`, parsed into pairs
with provenance; every passage ends as pairs or as a recorded reject (never lost). Also the optional judge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from qihuang.instruct.offline import cjk_ratio
from qihuang.instruct.parse import ParseError, parse_judge, parse_pairs
from qihuang.instruct.prompts import PROMPT_VERSION, TEACHER_TYPES, judge_messages, selfqa_messages
from qihuang.instruct.records import TASK_TYPES, Pair, Passage, reject
from qihuang.instruct.settings import InstructConfig
from qihuang.instruct.teacher import (
    ResponseCache,
    TeacherClient,
    TeacherError,
    TeacherUnreachable,
    cache_key,
)
from qihuang.runs import MetricsLog

_TYPE_ALIASES = {"白话翻译": "原文释义", "翻译": "原文释义", "释义": "原文释义", "方剂组成与功效": "方剂组成",
                 "药物性味归经与主治": "药物性味", "病机": "病机证候", "证候": "病机证候", "概念": "名词概念"}


def _task_type(t: str | None) -> str:
    t = (t or "").strip()
    t = _TYPE_ALIASES.get(t, t)
    return t if t in TASK_TYPES or t in TEACHER_TYPES else "原文释义"


def _span(p: Passage, evidence: str | None, answer: str) -> tuple[int, int]:
    """Character span of the supporting text: the quoted evidence, else its head, else the whole passage."""
    quotes = "“”\"'「」 "
    ev = (evidence or "").strip(quotes)
    if len(ev) >= 4 and (i := p.text.find(ev)) >= 0:
        return i, i + len(ev)
    for probe in (ev[:12], answer.strip(quotes)[:10]):
        if len(probe) >= 4 and (i := p.text.find(probe)) >= 0:
            return i, i + len(probe)
    return 0, len(p.text)


def pairs_from_reply(p: Passage, content: str, model: str, key: str) -> tuple[list[Pair], list[dict[str, Any]]]:
    """Parse a teacher reply for passage `p` into pairs, or a passage-level reject with the raw text."""
    base = {"passage_id": p.id, "book": p.book, "section": p.section, "category": p.category,
            "generator": f"teacher:{model}", "raw": content[:4000], "cache_key": key}
    try:
        items = parse_pairs(content)
    except ParseError as exc:
        if not content.strip():
            reason = "teacher_empty_output"
        elif cjk_ratio(content) < 0.3:
            reason = "teacher_not_chinese"
        else:
            reason = "unparseable"
        return [], [reject(base, reason, error=str(exc))]
    pairs = []
    for it in items:
        pairs.append(Pair(
            question=it["question"], answer=it["answer"], passage_id=p.id, book=p.book, section=p.section,
            category=p.category, task_type=_task_type(it.get("type")), generator=f"teacher:{model}",
            span=_span(p, it.get("evidence"), it["answer"]), dynasty=p.dynasty,
            extra={"evidence": it.get("evidence", ""), "cache_key": key, "prompt": PROMPT_VERSION},
        ))
    return pairs, []


async def _drive(passages: list[Passage], client: TeacherClient, work: Callable[[int, Passage], Awaitable[Any]],
                 workers: int, desc: str, log: MetricsLog | None) -> tuple[list[Any], str | None]:
    """Run `work` over passages with `workers` coroutines; after TeacherUnreachable only cached answers are used
    (the rest stay None and are recorded by the caller)."""
    results: list[Any] = [None] * len(passages)
    it = iter(range(len(passages)))
    abort: list[str] = []
    bar = tqdm(total=len(passages), unit="passage", desc=desc, disable=None, dynamic_ncols=True)
    t0 = time.time()

    async def worker() -> None:
        for i in it:
            try:
                results[i] = await work(i, passages[i])
            except TeacherUnreachable as exc:  # stop paying, but still use what the cache holds
                if not abort:
                    abort.append(str(exc))
                client.offline = True
                continue
            bar.update(1)
            done = bar.n
            if log is not None and (done % 200 == 0 or done == len(passages)):
                u = client.usage
                log.log(step=desc, done=done, total=len(passages), requests=u.requests, cached=u.cached,
                        retries=u.retries, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                        requests_per_s=round(u.requests / max(1e-9, time.time() - t0), 2))

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    bar.close()
    return results, (abort[0] if abort else None)


async def _selfqa(cfg: InstructConfig, passages: list[Passage], cache: ResponseCache, log: MetricsLog | None
                  ) -> tuple[list[Pair], list[dict[str, Any]], dict[str, Any]]:
    client = TeacherClient(cfg, cache)

    async def work(_: int, p: Passage) -> tuple[list[Pair], list[dict[str, Any]]]:
        msgs = selfqa_messages(p, cfg.pairs_per_passage)
        key = cache_key(cfg.teacher_model, msgs, client.s.params)
        try:
            content, _, _ = await client.complete(msgs)
        except TeacherUnreachable:
            raise
        except TeacherError as exc:
            return [], [reject({"passage_id": p.id, "book": p.book, "section": p.section, "category": p.category,
                                "generator": f"teacher:{cfg.teacher_model}"}, f"teacher_failed:{exc.kind}",
                               error=str(exc), attempts=exc.attempts)]
        return pairs_from_reply(p, content, cfg.teacher_model, key)

    t0 = time.time()
    try:
        results, aborted = await _drive(passages, client, work, cfg.concurrency, "teacher", log)
    finally:
        await client.aclose()
    pairs: list[Pair] = []
    rejects: list[dict[str, Any]] = []
    for p, res in zip(passages, results):
        if res is None:  # not attempted (or lost to the unreachable endpoint): recorded, never lost
            rejects.append(reject({"passage_id": p.id, "book": p.book, "section": p.section,
                                   "category": p.category}, "teacher_unreachable", error=aborted or ""))
            continue
        pairs += res[0]
        rejects += res[1]
    u = client.usage
    stats = {"passages": len(passages), "pairs": len(pairs), "passage_rejects": len(rejects),
             "requests": u.requests, "cached": u.cached, "retries": u.retries, "failures": u.failures,
             "faults": u.faults, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
             "cost": u.cost(cfg.price_in, cfg.price_out), "max_in_flight": client.max_in_flight,
             "seconds": round(time.time() - t0, 2), "aborted": aborted}
    return pairs, rejects, stats


def run_teacher(cfg: InstructConfig, passages: list[Passage], cache_dir: Path, log: MetricsLog | None = None
                ) -> tuple[list[Pair], list[dict[str, Any]], dict[str, Any]]:
    """Self-QA over all passages; returns (pairs, rejects, stats). `stats["aborted"]` holds the message when the
    endpoint became unreachable (remaining passages are then recorded as `teacher_unreachable` rejects)."""
    cache = ResponseCache(cache_dir)
    try:
        pairs, rejects, stats = asyncio.run(_selfqa(cfg, passages, cache, log))
    finally:
        cache.close()
    if log is not None:
        log.log(step="teacher_done", **{k: v for k, v in stats.items() if isinstance(v, (int, float, str))})
    return pairs, rejects, stats


def judge_pairs(cfg: InstructConfig, pairs: list[Pair], pmap: dict[str, Passage], out_dir: Path,
                log: MetricsLog | None = None) -> tuple[list[Pair], list[dict[str, Any]]]:
    """Ask the teacher whether each teacher-made pair is supported by its passage; unsupported → reject.
    Offline pairs and pairs whose verdict cannot be obtained are kept (the judge is an extra check)."""
    todo = [p for p in pairs if p.generator.startswith("teacher:") and p.passage_id in pmap]
    cache = ResponseCache(Path(cfg.cache_dir or out_dir / "teacher_cache") / "judge")

    async def go() -> tuple[list[Any], str | None]:
        client = TeacherClient(cfg, cache)
        sources = [pmap[p.passage_id] for p in todo]
        verdicts: dict[int, bool | None] = {}

        async def work(i: int, psg: Passage) -> None:
            try:
                content, _, _ = await client.complete(judge_messages(todo[i], psg))
                verdicts[i] = parse_judge(content)
            except TeacherUnreachable:
                raise
            except TeacherError:
                verdicts[i] = None

        try:
            _, aborted = await _drive(sources, client, work, cfg.concurrency, "judge", log)
        finally:
            await client.aclose()
        return [verdicts.get(i) for i in range(len(todo))], aborted

    try:
        verdicts, aborted = asyncio.run(go())
    finally:
        cache.close()
    bad = {id(p) for p, v in zip(todo, verdicts) if v is False}
    kept = [p for p in pairs if id(p) not in bad]
    rejects = [reject(p, "judge_unsupported") for p in pairs if id(p) in bad]
    if log is not None:
        log.log(step="judge", judged=len(todo), unsupported=len(bad), unknown=sum(v is None for v in verdicts),
                aborted=aborted or "")
    return kept, rejects
