"""Continuous batching (`qihuang.serve.batching`): rows decoded together give the tokens each gives alone, rows join
mid-flight and leave when done or cancelled, an error reaches every waiting request, and the server batches."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import start_server

QUESTIONS = ["桂枝汤主治什么？", "脉浮而缓何也？请依据古籍详细说明，并指出出处。", "人参", "何为阴阳？",
             "春日宜早起，何故？", "麻黄汤与桂枝汤有何异同？", "黄连味苦寒，主治为何？", "调神之大要是什么？"]


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The same model as a one-at-a-time engine and as a batching engine."""
    from qihuang.serve.engine import Engine

    one = Engine.load(tiny_model_dir)
    batched = Engine(one.model, one.tokenizer, name=one.name, path=one.path, max_batch=8)
    assert one.batcher is None and batched.batcher is not None
    return one, batched


def _ask_together(engine: Any, questions: list[str], max_new_tokens: int = 24,
                  cancel: set[int] | None = None) -> list[str]:
    """Ask every question at once from its own thread; the model is held until all are queued, so the first
    request decodes alone for its prefill and the others join the running batch afterwards."""
    out: list[str] = [""] * len(questions)
    flags = [threading.Event() for _ in questions]
    for i in cancel or set():
        flags[i].set()

    def ask(i: int) -> None:
        from qihuang.serve.engine import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens)
        msgs = [{"role": "user", "content": questions[i]}]
        out[i] = "".join(c.text for c in engine.generate(msgs, params, cancelled=flags[i].is_set))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    with engine._lock:  # hold the model: requests pile up in the queue
        threads[0].start()
        time.sleep(0.3)
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while engine.batcher.pending.qsize() < len(questions) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=60)
    return out


def test_batched_rows_decode_what_each_decodes_alone(pair: tuple[Any, Any]) -> None:
    one, batched = pair
    alone = [one.complete([{"role": "user", "content": q}], max_new_tokens=24) for q in QUESTIONS]
    steps_before = batched.batcher.steps
    together = _ask_together(batched, QUESTIONS)
    assert together == alone
    assert batched.batcher.widest == len(QUESTIONS)  # the seven queued ones joined the first one's batch
    opening = one.prompts.encode(one.prompts.render([{"role": "user", "content": "甲"}]))
    shared = batched.batcher.prefix  # learned from the prompts: the system prompt's tokens, run once
    assert shared is not None and shared.ids == opening[:len(shared.ids)] and len(shared.ids) >= 16
    tokens = sum(len(one.prompts.encode(t)) for t in together)
    assert batched.batcher.steps - steps_before < tokens / 3  # one forward served many rows


def test_prompts_arriving_together_are_prefilled_in_bounded_groups(pair: tuple[Any, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang.serve import batching

    one, batched = pair
    alone = [one.complete([{"role": "user", "content": q}], max_new_tokens=24) for q in QUESTIONS]
    widest = max(len(one.prompts.encode(one.prompts.render([{"role": "user", "content": q}]))) for q in QUESTIONS)
    budget = 2 * widest  # two of the longest prompts a prefill forward; shorter ones may share it three or more
    monkeypatch.setattr(batching, "PREFILL_TOKENS", budget)
    monkeypatch.setattr(batched.batcher, "learn_prefix", False)  # whole prompts prefilled: widths as counted here
    monkeypatch.setattr(batched.batcher, "prefix", None)
    seen: list[tuple[int, int]] = []  # (rows, padded width) of each prefill forward
    real = batched.batcher._prefill_group
    monkeypatch.setattr(batched.batcher, "_prefill_group",
                        lambda fresh: (seen.append((len(fresh), max(len(r.prompt_ids) for r in fresh))), real(fresh)))
    assert _ask_together(batched, QUESTIONS) == alone
    assert sum(rows for rows, _ in seen) == len(QUESTIONS)
    assert all(rows * width <= budget for rows, width in seen)  # no forward over the bound
    total = sum(len(one.prompts.encode(one.prompts.render([{"role": "user", "content": q}]))) for q in QUESTIONS)
    assert len(seen) >= -(-total // budget) > 1  # the prompts did not fit one forward, and were split


def test_a_cancelled_row_leaves_and_the_others_go_on(pair: tuple[Any, Any]) -> None:
    one, batched = pair
    alone = [one.complete([{"role": "user", "content": q}], max_new_tokens=16) for q in QUESTIONS[:4]]
    together = _ask_together(batched, QUESTIONS[:4], max_new_tokens=16, cancel={2})
    assert together[2] == ""
    assert [t for i, t in enumerate(together) if i != 2] == [t for i, t in enumerate(alone) if i != 2]
    assert batched.batcher.rows == []


def test_a_failing_forward_reaches_every_request_and_the_worker_lives_on(pair: tuple[Any, Any]) -> None:
    one, batched = pair
    dec = batched.batcher
    real = dec._forward
    calls = {"n": 0}

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated out of memory")
        return real(*args, **kwargs)

    dec._forward = broken
    errors: list[str] = []

    def ask(q: str) -> None:
        try:
            batched.complete([{"role": "user", "content": q}], max_new_tokens=12)
        except RuntimeError as exc:
            errors.append(str(exc))

    try:
        threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS[:3]]
        with batched._lock:
            for t in threads:
                t.start()
            time.sleep(0.3)
        for t in threads:
            t.join(timeout=60)
    finally:
        dec._forward = real
    assert errors and all(e == "simulated out of memory" for e in errors)
    assert dec.rows == [] and dec.cache is None
    expected = one.complete([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=12)
    assert batched.complete([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=12) == expected


def test_a_lone_greedy_request_drafts_and_stays_exact(pair: tuple[Any, Any]) -> None:
    one, batched = pair
    msgs = [{"role": "user", "content": "抄写：脉浮而缓者，风在表也；脉沉而迟者，寒在里也。脉浮而缓者，风在表也。"}]
    before = batched.batcher.steps
    got = batched.complete(msgs, max_new_tokens=40)
    drafted_steps = batched.batcher.steps - before
    assert got == one.complete(msgs, max_new_tokens=40)
    batched.lookup_draft = 0
    try:
        before = batched.batcher.steps
        assert batched.complete(msgs, max_new_tokens=40) == got
        plain_steps = batched.batcher.steps - before
    finally:
        batched.lookup_draft = 8
    assert drafted_steps < plain_steps


def test_sliding_window_caches_are_not_batched() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from qihuang.serve.batching import batchable

    cfg = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    assert not batchable(MistralForCausalLM(cfg))
    cfg.sliding_window = None
    assert batchable(MistralForCausalLM(cfg))


async def _stream(client: httpx.AsyncClient, url: str, q: str) -> str:
    body = {"messages": [{"role": "user", "content": q}], "max_tokens": 16, "stream": True, "retrieval": False}
    text, last = [], ""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                last = line[5:].strip()
                if last != "[DONE]":
                    chunk = json.loads(last)
                    text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    assert last == "[DONE]"
    return "".join(text)


def test_the_server_decodes_concurrent_streams_together(pair: tuple[Any, Any], index: Any) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    one, batched = pair
    alone = [one.complete([{"role": "user", "content": q}], max_new_tokens=16) for q in QUESTIONS]
    batched.batcher.widest = 0
    srv = start_server(create_app(batched, index, ServeConfig(max_concurrency=8, max_tokens=16, answer_guard=False)))

    async def main() -> list[str]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
            return list(await asyncio.gather(*[_stream(client, srv.url, q) for q in QUESTIONS]))

    try:
        with batched._lock:  # let all eight requests arrive before the first forward
            results: list[str] = []
            holder = threading.Thread(target=lambda: results.extend(asyncio.run(main())), daemon=True)
            holder.start()
            deadline = time.monotonic() + 10
            while batched.batcher.pending.qsize() < len(QUESTIONS) - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        holder.join(timeout=60)
    finally:
        srv.stop()
    assert results == alone
    assert batched.batcher.widest >= len(QUESTIONS) - 1


def test_a_request_over_the_work_bound_is_refused(engine: Any, index: Any) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    srv = start_server(create_app(engine, index, ServeConfig(max_tokens=64, max_request_work=64 * 40)))
    try:
        body = {"messages": [{"role": "user", "content": "脉" * 200}], "max_tokens": 64}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=30)
        small = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30,
                           json={"messages": [{"role": "user", "content": "脉"}], "max_tokens": 2,
                                 "retrieval": False})
    finally:
        srv.stop()
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and err["param"] == "max_tokens"
    assert small.status_code == 200
