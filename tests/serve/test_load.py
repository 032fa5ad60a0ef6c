"""Reliability over loopback: 64 concurrent streaming clients (each completes or gets a clean 503, no 5xx, no
hang), client disconnect stops generation, and the queue limit."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.serve.conftest import slow_engine, start_server


async def _one_stream(client: httpx.AsyncClient, url: str, i: int) -> tuple[int, str]:
    body = {"messages": [{"role": "user", "content": f"第{i}问：脉浮而缓何也？"}], "max_tokens": 8, "stream": True}
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            payload = json.loads(await r.aread())
            return r.status_code, payload["error"]["code"]
        last = ""
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                last = line[5:].strip()
        return 200, last


def _run_clients(url: str, n: int = 64) -> list[tuple[int, str]]:
    async def main() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=httpx.Timeout(90.0), limits=limits) as client:
            tasks = [_one_stream(client, f"{url}/v1/chat/completions", i) for i in range(n)]
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - t0 < 150
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert all(last == "[DONE]" for c, last in results if c == 200)
    assert all(code == "overloaded" for c, code in results if c == 503)
    health = httpx.get(f"{url}/health").json()
    assert health["active"] == 0 and health["queued"] == 0
    return results


def test_64_concurrent_streams_all_complete_when_queue_fits(engine: Any, index: Any) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    srv = start_server(create_app(engine, index, ServeConfig(max_concurrency=4, max_queue=64, max_tokens=16)))
    try:
        results = _run_clients(srv.url)
    finally:
        srv.stop()
    assert [c for c, _ in results] == [200] * 64


def test_64_concurrent_streams_overflow_gets_clean_503(tiny_model_dir: Any, index: Any) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    slow, _ = slow_engine(tiny_model_dir, 0.1)  # ~1 s per answer: the queue must overflow
    srv = start_server(create_app(slow, index, ServeConfig(max_concurrency=2, max_queue=10, max_tokens=16)))
    try:
        results = _run_clients(srv.url)
    finally:
        srv.stop()
    codes = [c for c, _ in results]
    assert codes.count(200) >= 12 and codes.count(503) >= 1


def test_client_disconnect_stops_generation(tiny_model_dir: Any, index: Any) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    slow, steps = slow_engine(tiny_model_dir, 0.03)
    srv = start_server(create_app(slow, index, ServeConfig(max_tokens=600, max_concurrency=1, answer_guard=False)))
    try:
        body = {"messages": [{"role": "user", "content": "人参"}], "max_tokens": 600, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=30) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith("data:"):
                    got += 1
                if got >= 4:
                    break
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_at = steps["n"]
        assert httpx.get(f"{srv.url}/health").json()["active"] == 0
        time.sleep(0.5)
        assert steps["n"] == stopped_at < 200  # no forward pass after the slot was freed; far from 600
        # non-streaming request whose client goes away (read timeout) is cancelled too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/v1/chat/completions", json={**body, "stream": False}, timeout=0.5)
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{srv.url}/health").json()["active"] == 0
        assert steps["n"] - stopped_at < 200
    finally:
        srv.stop()
