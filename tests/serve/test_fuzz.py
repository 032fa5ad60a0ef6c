"""Fuzz the API from its own OpenAPI schema (schemathesis, positive and negative data): zero 5xx."""

from __future__ import annotations

from typing import Any

import pytest

from tests.serve.conftest import start_server

MAX_EXAMPLES = 30


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors(engine: Any, index: Any, mode: str) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed: pip install schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    srv = start_server(create_app(engine, index, ServeConfig(max_tokens=8, max_queue=64)))
    seen: dict[str, set[int]] = {}
    try:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/health"}
        for op in operations:
            if mode == "negative" and op.method.lower() != "post":
                continue  # nothing to negate on parameterless GETs
            strategy = op.as_strategy(generation_mode=GenerationMode(mode))

            @given(case=strategy)
            @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def run(case: Any) -> None:
                response = case.call(timeout=30)
                seen.setdefault(op.label, set()).add(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])
                assert response.status_code < 500, response.text
                if response.status_code >= 400:
                    assert "error" in response.json()

            run()
    finally:
        srv.stop()
    chat = seen["POST /v1/chat/completions"]
    assert (200 in chat) if mode == "positive" else (chat & {400, 404})
