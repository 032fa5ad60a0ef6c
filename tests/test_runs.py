"""Run folders: atomic writes never leave half files; `done` is written last; finished stages are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.runs import MetricsLog, atomic_open, read_jsonl, run_stage, stage_dir, write_jsonl


def test_atomic_open_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_run_stage_writes_done_last_and_skips(tmp_path: Path) -> None:
    sd = stage_dir(tmp_path, "corpus")
    calls = []

    def work() -> dict:
        calls.append(1)
        sd.metrics().log(step=1, loss=2.0)
        return {"n": 3}

    s1 = run_stage(sd, {"a": 1}, work)
    assert s1["n"] == 3 and "wall_seconds" in s1 and sd.is_done() and s1["process_peak_rss_mb"] > 10
    assert json.loads((sd.path / "config.json").read_text())["a"] == 1
    assert MetricsLog(sd.path / "metrics.jsonl").read()[0]["loss"] == 2.0
    s2 = run_stage(sd, {"a": 1}, work)
    assert s2["skipped"] and len(calls) == 1
    (sd.path / "checkpoints" / "checkpoint-11").mkdir(parents=True)
    kept = sd.path / "kept.json"
    kept.write_text("{}")
    run_stage(sd, {"a": 1}, work, force=True)
    assert len(calls) == 2
    # a rebuilt stage does not resume from the finished build's checkpoints; its other files stay (e.g. caches)
    assert not (sd.path / "checkpoints").exists() and kept.exists()


def test_a_killed_stage_keeps_its_checkpoints_to_resume(tmp_path: Path) -> None:
    sd = stage_dir(tmp_path, "sft")
    (sd.path / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    seen = []
    run_stage(sd, {"a": 1}, lambda: {"resumable": seen.append((sd.path / "checkpoints").exists()) or True},
              force=True)
    assert seen == [True]


def test_failed_stage_is_not_done(tmp_path: Path) -> None:
    sd = stage_dir(tmp_path, "pretrain")

    def boom() -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(sd, {}, boom)
    assert not sd.is_done()


def test_read_jsonl_names_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    write_jsonl(p, [{"a": 1}])
    with open(p, "a", encoding="utf-8") as fh:
        fh.write("{broken\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not valid JSON"):
        list(read_jsonl(p))


def test_run_dir_names_one_final_model_for_serve_and_export(tmp_path: Path) -> None:
    import os

    import pytest

    from qihuang.merge import _resolve_model_dir
    from qihuang.models import ModelError
    from qihuang.runs import RunDir
    from qihuang.serve.engine import resolve_model_dir

    run = tmp_path / "demo"

    def model(stage: str, age: float = 0.0) -> Path:
        d = run / stage / ("model" if stage != "merged" else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}")
        t = 1_700_000_000 + age
        os.utime(d / "config.json", (t, t))
        return d.resolve() if stage == "merged" else d

    with pytest.raises(ModelError, match="merged/"):
        RunDir(run).final_model()
    model("pretrain", 0)
    sft = model("sft", 10)
    (run / "dpo").mkdir()  # an unfinished stage: no model
    assert RunDir(run).final_model() == sft and RunDir(run).model_of("dpo") is None
    merged = model("merged", 20)
    assert RunDir(run).final_model().resolve() == merged  # merged after the last stage: the same weights, with a card
    model("sft", 30)  # SFT rebuilt after the merge: merged/ is stale
    assert RunDir(run).final_model() == sft
    assert resolve_model_dir(run) == _resolve_model_dir(run) == sft  # serve and export pick the same model
