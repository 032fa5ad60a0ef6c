"""The eval stage end to end on the tiny model: results.json, report.md, charts, resume; and the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qihuang.evaluate import EvalConfig, evaluate_models
from qihuang.runs import StageDir, run_stage

from .conftest import BAD_CSV, GOOD_CMMLU, write_jsonl, write_text


@pytest.fixture()
def files(tmp_path: Path, heldout_file: Path) -> dict[str, Path]:
    return {
        "heldout": heldout_file,
        "bad": write_text(tmp_path / "bad.csv", BAD_CSV),
        "good": write_text(tmp_path / "good.csv", GOOD_CMMLU),
        "qa": write_jsonl(tmp_path / "heldout_qa.jsonl", [
            {"question": "四时之气如何？", "reference": "春生夏长，秋收冬藏。", "source": "春生夏长，秋收冬藏，此天地之常也。"},
            {"question": "如何养生？", "reference": "饮食有节，起居有常。", "source": "饮食有节，起居有常，不妄作劳。"},
        ]),
    }


def _cfg(files: dict[str, Path]) -> EvalConfig:
    return EvalConfig(mcq_files=[str(files["bad"]), f"{files['good']}:2"], bpc_max_chars=40, bpc_window=16,
                      bpc_stride=8, qa_limit=2, qa_max_new_tokens=4, bootstrap=200)


def test_evaluate_models_end_to_end(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(files)
    out = StageDir(tmp_path / "eval")
    models = {"base": tiny_model_dir, "sft": tiny_model_dir}
    summary = run_stage(out, cfg, lambda: evaluate_models(cfg, models, files["heldout"], files["qa"], out))
    doc = json.loads((out.path / "results.json").read_text(encoding="utf-8"))
    assert list(doc["models"]) == ["base", "sft"]
    base = doc["models"]["base"]
    assert base["bpc"]["chars"] == 40 and base["bpc"]["bpc"] > 0
    bad = base["mcq"]["bad.csv"] if "bad.csv" in base["mcq"] else next(v for k, v in base["mcq"].items()
                                                                          if k.endswith("bad.csv"))
    assert bad["n"] == 2 and bad["skipped"] == 5 and bad["skipped_rows"] == [2, 3, 4, 5, 6]
    assert bad["chance"] == pytest.approx(1 / 3) and bad["ci95"][0] <= bad["accuracy"] <= bad["ci95"][1]
    good = next(v for k, v in base["mcq"].items() if k.endswith("good.csv"))
    assert good["n"] == 2 and good["chance"] == 0.25
    assert base["qa"]["heldout_qa"]["n"] == 2 and base["qa"]["heldout_qa"]["n_with_source"] == 2
    assert 0.0 <= base["qa"]["heldout_qa"]["rouge_l"] <= 1.0
    # same weights under two labels: identical figures, paired difference exactly zero
    sft = doc["models"]["sft"]
    assert sft["bpc"]["bpc"] == base["bpc"]["bpc"]
    assert next(v for k, v in sft["mcq"].items() if k.endswith("bad.csv"))["vs_base"]["diff"] == 0.0
    md = (out.path / "report.md").read_text(encoding="utf-8")
    assert "| **base** |" in md and "| **sft** |" in md and "bpc" in md
    assert str(files["bad"]) in md and "5 rows skipped (rows 2, 3, 4, 5, 6)" in md
    assert str(files["heldout"]) in md and "heldout_qa" in md
    for chart in ("bpc.png", "mcq_accuracy.png", "qa.png"):
        assert (out.path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["models"]["base"]["bpc"] == round(base["bpc"]["bpc"], 4) and out.is_done()
    preds = (out.path / "predictions").glob("base__mcq__*bad.csv.jsonl")
    assert len(next(preds).read_text(encoding="utf-8").splitlines()) == 2

    # rerun (e.g. after a kill): finished parts are reused, not recomputed — also when the data folder was
    # re-provisioned meanwhile (same bytes, new mtimes: the parts are keyed by content)
    (out.path / "results.json").unlink()
    for f in files.values():
        os.utime(f, (time.time() + 100, time.time() + 100))
    n_before = len(out.metrics().read())
    again = evaluate_models(cfg, models, files["heldout"], files["qa"], out)
    events = [m["event"] for m in out.metrics().read()[n_before:]]
    assert events.count("model_reused") == 2 and "model_load" not in events
    assert again["models"] == summary["models"] and (out.path / "results.json").exists()
    # a part lost (killed while it ran) is the only thing recomputed
    next((out.path / "parts" / "sft").glob("mcq__*good.csv.json")).unlink()
    n_before = len(out.metrics().read())
    evaluate_models(cfg, models, files["heldout"], files["qa"], out)
    new = [(m["event"], m.get("label")) for m in out.metrics().read()[n_before:] if m["event"] != "progress"]
    assert [e for e in new if e[0] in ("model_load", "mcq", "bpc", "qa")] == [("model_load", "sft"), ("mcq", "sft")]


def test_bpc_models_picks_whose_bits_per_char_are_scored(tiny_model_dir: Path, files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """`bpc_models` as the demo sets it (base and CPT model): the SFT model's bits/char is not scored (a dash in
    the report), the others' are; an empty entry is refused."""
    from qihuang.config import ConfigError

    cfg = EvalConfig(mcq_files=[], bpc_max_chars=40, bpc_window=16, bpc_stride=8, qa_limit=0, bootstrap=200,
                     bpc_models=["base", "cpt"])
    out = StageDir(tmp_path / "eval")
    models = {"base": tiny_model_dir, "cpt": tiny_model_dir, "sft": tiny_model_dir}
    run_stage(out, cfg, lambda: evaluate_models(cfg, models, files["heldout"], None, out))
    doc = json.loads((out.path / "results.json").read_text(encoding="utf-8"))
    assert doc["models"]["base"]["bpc"]["bpc"] == doc["models"]["cpt"]["bpc"]["bpc"] > 0
    assert doc["models"]["sft"]["bpc"] is None
    assert [m["label"] for m in out.metrics().read() if m["event"] == "bpc"] == ["base", "cpt"]
    assert "| **sft** | – |" in (out.path / "report.md").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="bpc_models"):
        EvalConfig(bpc_models=[" "])


def test_zero_valid_rows_file_fails_clearly(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from qihuang.evaluate.mcq_formats import EvalDataError

    empty = write_text(tmp_path / "empty.csv", "question,A,B,answer\n,x,y,A\n")
    cfg = EvalConfig(mcq_files=[str(empty)], bpc_max_chars=0, qa_limit=1, bootstrap=200)
    with pytest.raises(EvalDataError, match="no valid question"):
        evaluate_models(cfg, {"base": tiny_model_dir}, None, None, StageDir(tmp_path / "e"))


def test_cli_mcq_and_compare(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from qihuang.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "mcq", str(tiny_model_dir), str(files["bad"]), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    assert "acc " in res.output and "skipped 5 rows 2,3,4,5,6" in res.output

    # a run stage folder (runs/x/sft → its model/) with the run's held-out passages found automatically
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    (run / "corpus").mkdir()
    (run / "corpus" / "heldout.jsonl").write_text(files["heldout"].read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "cmp"
    res = runner.invoke(cli, ["eval", "compare", str(run / "sft"), "--out", str(out), "--mcq-files",
                              str(files["good"]), "--bpc-max-chars", "30", "--bpc-window", "16", "--bpc-stride", "8",
                              "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(doc["models"]) == ["sft"] and doc["models"]["sft"]["bpc"]["chars"] == 30
    assert (out / "done").exists()

    # earlier results merge without rerunning, relabelled
    merged = tmp_path / "merged"
    res = runner.invoke(cli, ["eval", "compare", f"first={out}", f"second={out / 'results.json'}", "--out",
                              str(merged)])
    assert res.exit_code == 0, res.output
    assert "| **first** |" in res.output and "| **second** |" in res.output
    assert (merged / "mcq_accuracy.png").exists()
