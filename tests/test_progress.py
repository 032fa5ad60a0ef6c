"""Progress bars (`qihuang.progress`): drawn on a terminal or when forced, silent otherwise; eval's progress
callback draws one with its count."""

from __future__ import annotations

import io
import sys

import pytest


def test_bars_follow_the_terminal_and_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang import progress

    monkeypatch.delenv("QIHUANG_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert not progress.enabled()
    b = progress.bar(3, "quiet", "item")
    b.update(3)
    b.close()
    assert sys.stderr.getvalue() == ""
    monkeypatch.setenv("QIHUANG_PROGRESS", "1")
    assert progress.enabled()
    monkeypatch.setenv("QIHUANG_PROGRESS", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not progress.enabled()


def test_eval_progress_draws_a_bar_and_logs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: object) -> None:
    from pathlib import Path

    from qihuang.evaluate.runner import progress_logger
    from qihuang.runs import MetricsLog

    monkeypatch.setenv("QIHUANG_PROGRESS", "1")
    log = MetricsLog(Path(str(tmp_path)) / "metrics.jsonl")
    report = progress_logger(log, "final", "heldout_books:rag")
    report(16, 48)
    report(48, 48)
    err = capsys.readouterr().err
    assert "eval final heldout_books:rag" in err and "48/48" in err
    last = log.read()[-1]
    assert (last["event"], last["label"], last["done"], last["total"]) == ("progress", "final", 48, 48)
