"""The web chat page in headless Chromium (Debian's chromium driven by Playwright): type a question, watch the
answer stream in, open a citation card, reset; saves a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import slow_engine, start_server

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for cand in (os.environ.get("QIHUANG_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and Path(cand).exists():
            return cand
    pytest.skip("chromium not installed: apt-get install -y chromium")


@pytest.mark.slow
def test_web_chat_streams_and_cites(tiny_model_dir: Path, index: Any, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install playwright")
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    exe = _chromium()
    eng, _ = slow_engine(tiny_model_dir, 0.02)  # tokens arrive over ~1 s: streaming is observable
    srv = start_server(create_app(eng, index, ServeConfig(max_tokens=64, default_max_tokens=40)))
    shot = Path(os.environ.get("QIHUANG_SCREENSHOT_DIR", tmp_path)) / "web_chat.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 760})
                requests: list[str] = []
                page.on("request", lambda r: requests.append(r.url))
                page.goto(srv.url + "/")
                assert page.title().startswith("岐黄")
                page.fill("#temperature", "1.0")  # the random tiny model writes visible words when sampling
                page.evaluate("""() => { window.__sizes = [];
                    new MutationObserver(() => { const a = document.querySelector('.msg.assistant');
                        if (a) window.__sizes.push(a.textContent.length); })
                    .observe(document.getElementById('log'), {subtree: true, childList: true,
                                                               characterData: true}); }""")
                page.fill("#question", "桂枝汤主治什么？")
                page.click("#send")
                page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
                answer = page.inner_text(".msg.assistant")
                assert answer.strip()
                sizes = page.evaluate("window.__sizes")
                assert len(set(sizes)) >= 3, sizes  # the text grew in several steps: streamed
                card = page.locator("details.source").first
                assert "《拟方汇编·桂枝汤条》" in card.locator("summary").inner_text()
                assert not card.locator("blockquote").is_visible()
                card.locator("summary").click()
                assert card.locator("blockquote").is_visible()
                assert "桂枝汤" in card.locator("blockquote").inner_text()
                assert card.locator(".meta").inner_text().startswith("测·拟医 · passage test-003")  # dynasty·author
                assert page.locator("details.source").count() >= 2
                page.screenshot(path=str(shot), full_page=True)
                assert all(u.startswith(srv.url) for u in requests), requests  # nothing from a CDN
                page.click("#reset")
                assert page.locator(".msg").count() == 0
                page.fill("#question", "人参")
                page.press("#question", "Enter")
                page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
                assert page.locator(".msg.user").count() == 1  # history was reset
            finally:
                browser.close()
    finally:
        srv.stop()
    assert shot.exists() and shot.stat().st_size > 10_000
