"""The OpenAI-compatible API over real loopback HTTP: JSON and SSE answers, usage, citations, the official client,
validation errors, model list, health, OpenAPI and the web page."""

from __future__ import annotations

import json
from typing import Any

import httpx

from qihuang.answer_guard import guard_answer
import pytest

QUESTION = "桂枝汤主治什么？"


def sse_events(resp: httpx.Response) -> list[Any]:
    """Parse `data:` lines of an SSE response (JSON objects, and the final "[DONE]")."""
    out: list[Any] = []
    for line in resp.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_non_stream_answer_has_usage_and_citations(live: Any, engine: Any) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == engine.name
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > engine.prompts.count_tokens(QUESTION)  # template + passages
    cites = data["citations"]
    assert cites and cites[0]["id"] == "test-003" and cites[0]["book"] == "拟方汇编"
    assert cites[0]["section"] == "桂枝汤条" and "桂枝汤" in cites[0]["quote"]
    assert cites[0]["quote_end"] > cites[0]["quote_start"] >= 0


def test_greedy_answer_matches_engine(live: Any, engine: Any) -> None:
    body = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 10, "retrieval": False}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["citations"] == []
    raw = engine.complete([{"role": "user", "content": "你好"}], 10)
    # the answer users get is the engine's, through the answer guard (a looping tail is cut)
    assert r.json()["choices"][0]["message"]["content"] == guard_answer(raw, "你好", None).text


def test_stream_sse(live: Any) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["citations"][0]["id"] == "test-003"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "citations" in finals[0]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    r2 = httpx.post(f"{live.url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
    assert r2.json()["choices"][0]["message"]["content"] == text  # greedy: stream == non-stream


def test_stop_sequence_cuts_answer(live: Any) -> None:
    base = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 20, "retrieval": False,
            "temperature": 1.0, "seed": 3}
    full = httpx.post(f"{live.url}/v1/chat/completions", json=base, timeout=60).json()
    text = full["choices"][0]["message"]["content"]
    assert len(text) >= 4 and full["choices"][0]["finish_reason"] == "length"
    stop = text[-3:-1]
    cut = httpx.post(f"{live.url}/v1/chat/completions", json={**base, "stop": [stop]}, timeout=60).json()
    got = cut["choices"][0]["message"]["content"]
    assert got == text[: text.index(stop)] and cut["choices"][0]["finish_reason"] == "stop"


def test_openai_client_chat_and_stream(live: Any, engine: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", timeout=60, max_retries=0)
    assert [m.id for m in client.models.list()] == [engine.name]
    resp = client.chat.completions.create(model=engine.name, messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=8)
    assert resp.choices[0].message.content is not None and resp.usage is not None
    assert resp.usage.completion_tokens > 0
    assert (resp.model_extra or {}).get("citations")
    stream = client.chat.completions.create(model=engine.name, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == resp.choices[0].message.content


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -0.1}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x" * 9000}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}] * 40}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "bogus": 1}, "bogus"),
    ({"prompt": "x"}, None),
])
def test_validation_errors_are_openai_json_400(live: Any, body: dict[str, Any], param: str | None) -> None:
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert err["param"].startswith(param)


def test_other_client_errors(live: Any) -> None:
    r = httpx.post(f"{live.url}/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "gpt-9", "messages": [
        {"role": "user", "content": "x"}]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(f"{live.url}/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(f"{live.url}/nope", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{live.url}/v1/chat/completions", content=b"x" * 1_000_001, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_models_health_openapi_and_web(live: Any, engine: Any) -> None:
    assert httpx.get(f"{live.url}/v1/models").json()["data"][0]["id"] == engine.name
    health = httpx.get(f"{live.url}/health").json()
    assert health["status"] == "ok" and health["passages"] == 6
    spec = httpx.get(f"{live.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        r = httpx.get(f"{live.url}/static/{name}")
        assert r.status_code == 200 and len(r.text) > 100
    assert "//cdn" not in page.text and "https://" not in page.text
    assert httpx.get(f"{live.url}/static/..%2Fapp.py").status_code == 404


def test_adapter_names_route_to_lora(tiny_model_dir: Any, index: Any) -> None:
    """A backend with LoRA adapters (vLLM) serves each adapter as a model id; the request's `model` picks it."""
    from qihuang.serve.app import create_app
    from qihuang.serve.engine import Engine
    from qihuang.serve.settings import ServeConfig
    from tests.serve.conftest import start_server

    seen: list[str | None] = []

    class WithAdapters(Engine):
        def generate(self, *args: Any, lora: str | None = None, **kwargs: Any) -> Any:
            seen.append(lora)
            return super().generate(*args, **kwargs)

    base = Engine.load(tiny_model_dir)
    eng = WithAdapters(base.model, base.tokenizer, name="base")
    eng.adapters = {"shanghan": "unused-dir"}
    srv = start_server(create_app(eng, index, ServeConfig(max_tokens=8)))
    try:
        assert [m["id"] for m in httpx.get(f"{srv.url}/v1/models").json()["data"]] == ["base", "shanghan"]
        for model in ("shanghan", "base", None):
            body = {"messages": [{"role": "user", "content": "脉"}], "max_tokens": 2, "model": model,
                    "retrieval": False}
            assert httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        assert seen == ["shanghan", None, None]
    finally:
        srv.stop()
