"""API keys: with keys configured, nothing but /health answers without a valid Bearer key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serve.conftest import LiveServer, start_server

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def keyed(engine: Any, index: Any) -> Iterator[LiveServer]:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    srv = start_server(create_app(engine, index, ServeConfig(api_keys=[KEY, "second-key"], max_tokens=16,
                                                             default_max_tokens=4)))
    yield srv
    srv.stop()


def _requests(url: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    chat = {"messages": [{"role": "user", "content": "桂枝汤"}], "max_tokens": 4}
    return [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
            ("POST", "/v1/chat/completions", {**chat, "stream": True}), ("GET", "/openapi.json", None),
            ("GET", "/docs", None), ("GET", "/redoc", None), ("GET", "/no-such-path", None),
            ("POST", "/v1/chat/completions", {"bad": 1}), ("DELETE", "/v1/models", None)]


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", KEY,
                                  f"Bearer {KEY[:-1]}"])
def test_everything_but_health_needs_a_valid_key(keyed: LiveServer, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    for method, path, body in _requests(keyed.url):
        r = httpx.request(method, keyed.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json()["error"]["type"] == "authentication_error"
        assert KEY not in r.text
    r = httpx.get(f"{keyed.url}/health", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_routes_all_covered(keyed: LiveServer) -> None:
    """Every route the app has is in the list the auth test walks (a new route must be added there)."""
    routes = [x for r in keyed.app.routes for x in getattr(getattr(r, "original_router", None), "routes", [r])]
    paths = {getattr(r, "path", "") for r in routes}  # a router included in the app counts with its routes
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= paths
    walked = {p for _, p, _ in _requests(keyed.url)} | {"/health", "/", "/static/{name}", "/docs/oauth2-redirect"}
    assert paths <= walked, paths - walked


def test_web_page_and_assets_are_public(keyed: LiveServer) -> None:
    """#16 defect 6: with --api-keys the page (and its assets) still loads, so its key field can be shown."""
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        r = httpx.get(keyed.url + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.status_code)
    assert httpx.get(f"{keyed.url}/static/secret.txt", timeout=30).status_code == 404
    assert httpx.get(f"{keyed.url}/static/../v1/models", timeout=30).status_code in (401, 404)
    assert httpx.get(f"{keyed.url}/v1/models", timeout=30).status_code == 401


def test_valid_keys_work(keyed: LiveServer) -> None:
    for key in (KEY, "second-key"):
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{keyed.url}/v1/models", headers=h, timeout=30).status_code == 200
        r = httpx.post(f"{keyed.url}/v1/chat/completions", headers=h, timeout=60,
                       json={"messages": [{"role": "user", "content": "桂枝汤"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    import openai

    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert client.chat.completions.create(model="x" if False else client.models.list().data[0].id,
                                          messages=[{"role": "user", "content": "脉"}], max_tokens=3).choices
    bad = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
