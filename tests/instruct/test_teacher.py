"""The teacher path against a real OpenAI-compatible server on a loopback socket: faults end in a retry or a
recorded reject (never a lost passage), the cache makes reruns free, crash + resume repeats no request."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qihuang.instruct import InstructConfig, build_instructions
from qihuang.instruct.records import load_passages
from qihuang.instruct.selfqa import run_teacher
from qihuang.instruct.teacher import Bucket, TeacherUnreachable
from qihuang.runs import MetricsLog, StageDir, read_jsonl

from .fake_teacher import Behaviour, FakeTeacher, passage_key, served_total

KEY = "sk-test-SECRET-4242"


@pytest.fixture()
def teacher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIHUANG_TEST_KEY", KEY)


def tcfg(url: str, **kw: object) -> InstructConfig:
    base = dict(teacher_url=url, teacher_model="fake", generators=[], api_key_env="QIHUANG_TEST_KEY",
                concurrency=4, timeout=0.5, max_retries=3, backoff=0.01, general_data=[], heldout_fraction=0.0,
                max_type_share=1.0)
    base.update(kw)
    return InstructConfig(**base)  # type: ignore[arg-type]


def _ids(pairs: list, rejects: list) -> set[str]:
    return {p.passage_id for p in pairs} | {r["passage_id"] for r in rejects}


def test_good_run_provenance_and_cache(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    with FakeTeacher() as t:
        log = MetricsLog(tmp_path / "metrics.jsonl")
        pairs, rejects, stats = run_teacher(tcfg(t.url), ps, tmp_path / "cache", log)
        log.close()
        assert not rejects and stats["requests"] == len(ps) == t.b.requests
        assert {p.passage_id for p in pairs} == {p.id for p in ps}
        by_id = {p.id: p for p in ps}
        for p in pairs:
            psg = by_id[p.passage_id]
            assert p.generator == "teacher:fake" and p.book == psg.book and p.section == psg.section
            s, e = p.span
            assert psg.text[s:e] == p.extra["evidence"]
        again, _, stats2 = run_teacher(tcfg(t.url), ps, tmp_path / "cache")
        assert t.b.requests == len(ps) and stats2["requests"] == 0 and stats2["cached"] == len(ps)
        assert [p.to_dict() for p in again] == [p.to_dict() for p in pairs]
        assert all(a == f"Bearer {KEY}" for a in t.b.auth)
    assert stats["prompt_tokens"] > 0 and stats["cost"] > 0
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(encoding="utf-8", errors="ignore")


def test_transient_faults_are_retried(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    plan = {0: ["timeout"], 1: ["429", "429"], 2: ["500"], 3: ["malformed"], 4: ["die"], 5: ["die", "500"]}
    b = Behaviour(faults={passage_key(ps[i].text): f for i, f in plan.items()}, hang=2.0)
    with FakeTeacher(b) as t:
        pairs, rejects, stats = run_teacher(tcfg(t.url), ps, tmp_path / "cache")
    assert not rejects and {p.passage_id for p in pairs} == {p.id for p in ps}
    for i, f in plan.items():
        assert b.attempts[passage_key(ps[i].text)] == len(f) + 1
    assert set(stats["faults"]) == {"timeout", "http_429", "http_500", "malformed_response", "connection_lost"}
    assert stats["retries"] == sum(len(f) for f in plan.values())


def test_persistent_faults_become_rejects(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    plan = {0: ["500"] * 9, 1: ["400"], 2: ["timeout"] * 9, 3: ["429"] * 9}
    b = Behaviour(faults={passage_key(ps[i].text): f for i, f in plan.items()}, hang=1.0)
    with FakeTeacher(b) as t:
        pairs, rejects, _ = run_teacher(tcfg(t.url, max_retries=2), ps, tmp_path / "cache")
    reasons = {r["passage_id"]: r["reason"] for r in rejects}
    assert reasons == {ps[0].id: "teacher_failed:http_500", ps[1].id: "teacher_failed:http_400",
                       ps[2].id: "teacher_failed:timeout", ps[3].id: "teacher_failed:http_429"}
    assert b.attempts[passage_key(ps[1].text)] == 1  # 400 is not retried
    assert b.attempts[passage_key(ps[0].text)] == 3
    assert _ids(pairs, rejects) == {p.id for p in ps}  # never a lost passage


def test_bad_replies_are_parsed_or_rejected_with_raw(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    modes = {0: "unparseable", 1: "english", 2: "empty", 3: "fenced", 4: "numbered"}
    b = Behaviour(modes={passage_key(ps[i].text): m for i, m in modes.items()})
    with FakeTeacher(b) as t:
        pairs, rejects, _ = run_teacher(tcfg(t.url), ps, tmp_path / "cache")
    reasons = {r["passage_id"]: r for r in rejects}
    assert reasons[ps[0].id]["reason"] == "unparseable" and "值得反复研读" in reasons[ps[0].id]["raw"]
    assert reasons[ps[1].id]["reason"] == "teacher_not_chinese"
    assert reasons[ps[2].id]["reason"] == "teacher_empty_output"
    assert {ps[3].id, ps[4].id} <= {p.passage_id for p in pairs}
    assert _ids(pairs, rejects) == {p.id for p in ps}


def test_grounding_rejects_off_passage_answers(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    with FakeTeacher(Behaviour(mode="offpassage")) as t:
        out = StageDir(tmp_path / "off")
        s = build_instructions(tcfg(t.url), passages_file, out)
    rejects = list(read_jsonl(out.path / "rejects.jsonl"))
    assert s["pairs_in_train"] == 0 and rejects
    assert all(r["reason"] == "not_grounded" and r["grounding"] < 0.2 for r in rejects)
    with FakeTeacher(Behaviour(mode="good")) as t:
        s = build_instructions(tcfg(t.url), passages_file, StageDir(tmp_path / "good"))
    assert s["pairs_in_train"] > 20 and s["rejects"] == 0


def test_judge_rejects_unsupported(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    b = Behaviour(modes={passage_key(ps[0].text): "offpassage"})
    with FakeTeacher(b) as t:
        cfg = tcfg(t.url, teacher_judge=True, grounding_threshold=0.0)
        out = StageDir(tmp_path / "j")
        build_instructions(cfg, passages_file, out)
    rejects = list(read_jsonl(out.path / "rejects.jsonl"))
    assert rejects and all(r["reason"] == "judge_unsupported" and r["passage_id"] == ps[0].id for r in rejects)


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_clear_message_partial_kept(tmp_path: Path, passages_file: Path, lexicon_file: Path,
                                                teacher_env: None) -> None:
    out = StageDir(tmp_path / "st")
    with FakeTeacher() as t:  # first 5 passages answered and cached
        build_instructions(tcfg(t.url, max_passages=5), passages_file, out)
    cfg = tcfg(_closed_port_url(), cache_dir=out.path / "teacher_cache", max_retries=1,
               generators=["attribution"], lexicon=str(lexicon_file))
    with pytest.raises(TeacherUnreachable, match=r"unreachable.*cannot connect.*Partial results kept"):
        build_instructions(cfg, passages_file, out)
    # the cache key is (model, messages, params), not the URL: the 5 answered passages survive the outage
    first = {p.id for p in load_passages(passages_file, 5)}
    gen = list(read_jsonl(out.path / "generated.jsonl"))
    assert {g["passage_id"] for g in gen if g["generator"] == "teacher:fake"} == first
    assert any(g["generator"] == "offline:attribution" for g in gen)
    rej = list(read_jsonl(out.path / "generate_rejects.jsonl"))
    ids = {g["passage_id"] for g in gen if g["generator"] == "teacher:fake"} | {r["passage_id"] for r in rej}
    assert ids == {f"p{i:03d}" for i in range(12)}
    assert all(r["reason"] == "teacher_unreachable" for r in rej) and {r["passage_id"] for r in rej}.isdisjoint(first)


CHILD = """
import sys
from pathlib import Path
from qihuang.instruct.settings import InstructConfig
from qihuang.instruct.records import load_passages
from qihuang.instruct.selfqa import run_teacher
cfg = InstructConfig(teacher_url=sys.argv[1], teacher_model="fake", generators=[], api_key_env="QIHUANG_TEST_KEY",
                     concurrency=4, backoff=0.01, timeout=30)
run_teacher(cfg, load_passages(Path(sys.argv[2])), Path(sys.argv[3]))
"""


def test_crash_mid_run_resume_repeats_nothing(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    cache = tmp_path / "cache"
    b = Behaviour(allow=5)  # answer 5 requests, hold the rest in flight
    with FakeTeacher(b) as t:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, t.url, str(passages_file), str(cache)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        lines = cache / "responses.jsonl"
        while not (lines.exists() and len(lines.read_text(encoding="utf-8").splitlines()) >= 5):
            assert time.time() < deadline and proc.poll() is None, "child did not get 5 answers"
            time.sleep(0.02)
        while b.in_flight < 4 and time.time() < deadline:  # the next requests are in flight, held by the gate
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        while b.in_flight and time.time() < deadline:  # held handlers notice the dead client and give up
            time.sleep(0.02)
        assert served_total(b) == 5 and b.in_flight == 0
        b.allow = None
        pairs, rejects, stats = run_teacher(tcfg(t.url, timeout=30), ps, cache)
    assert stats["cached"] == 5 and stats["requests"] == len(ps) - 5
    assert served_total(b) == len(ps) and max(b.served.values()) == 1  # no response was paid for twice
    assert not rejects and {p.passage_id for p in pairs} == {p.id for p in ps}


def test_concurrency_bound_reached(tmp_path: Path, passages_file: Path, teacher_env: None) -> None:
    ps = load_passages(passages_file)
    b = Behaviour(delay=0.2)
    with FakeTeacher(b) as t:
        _, _, stats = run_teacher(tcfg(t.url, concurrency=8), ps, tmp_path / "c")
    assert b.max_in_flight == 8 == stats["max_in_flight"]


def test_rate_limit_buckets() -> None:
    async def go() -> float:
        bucket = Bucket(per_minute=600)  # 10/s, holds 20
        t0 = time.monotonic()
        for _ in range(25):
            await bucket.take(1)
        return time.monotonic() - t0

    assert 0.4 < asyncio.run(go()) < 2.0


def test_token_bucket_corrects_after_usage() -> None:
    async def go() -> float:
        bucket = Bucket(per_minute=6000)  # 100 tokens/s, holds 200
        await bucket.take(10)
        bucket.correct(250)  # the request really used 260 tokens
        t0 = time.monotonic()
        await bucket.take(50)
        return time.monotonic() - t0

    assert asyncio.run(go()) > 0.5


def test_teacher_config_is_dataclass_friendly() -> None:
    cfg = tcfg("http://127.0.0.1:1/v1")
    assert dataclasses.replace(cfg, concurrency=2).concurrency == 2
    assert KEY not in repr(cfg)


@pytest.mark.parametrize("usage", ["x", {"prompt_tokens": "n/a", "completion_tokens": None}, [1, 2], 7,
                                   {"prompt_tokens": -5, "completion_tokens": float("inf")}])
def test_malformed_usage_is_tolerated_and_cached(tmp_path: Path, passages_file: Path, teacher_env: None,
                                                 usage: object) -> None:
    """#16 defect 7: `"usage": "x"` killed the build with an AttributeError before the paid answer was cached."""
    ps = load_passages(passages_file)[:2]
    with FakeTeacher(Behaviour(usage=usage)) as t:
        pairs, rejects, stats = run_teacher(tcfg(t.url), ps, tmp_path / "cache")
        assert {p.passage_id for p in pairs} == {p.id for p in ps} and not rejects
        assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0  # estimated instead
        paid = t.b.requests
        again, _, stats2 = run_teacher(tcfg(t.url), ps, tmp_path / "cache")
        assert t.b.requests == paid and stats2["cached"] == len(ps)  # the rerun pays nothing
        assert len(again) == len(pairs)


def test_usage_counts_fall_back_to_the_estimates() -> None:
    from qihuang.instruct.teacher import parse_usage

    assert parse_usage({"prompt_tokens": 0, "completion_tokens": "12"}, 5, 7) == {"prompt_tokens": 5,
                                                                                  "completion_tokens": 12}
    assert parse_usage({"prompt_tokens": 0.5, "completion_tokens": -3}, 5, 7) == {"prompt_tokens": 5,
                                                                                   "completion_tokens": 7}
    assert parse_usage({"prompt_tokens": 3.9, "completion_tokens": 1e16}, 5, 7) == {"prompt_tokens": 3,
                                                                                     "completion_tokens": 7}
