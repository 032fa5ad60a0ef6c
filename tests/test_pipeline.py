"""`qihuang run` end to end on the tiny recipe: every stage writes its outputs and `done`, the report is filled
from real measurements, and a rerun skips finished stages and redoes only an unfinished one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qihuang.pipeline import STAGES
from tests.finetune.helpers import LAUNCH_PRESETS, SHARDING

ROOT = Path(__file__).resolve().parents[1]


def run(recipe: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from qihuang.cli import main; main()", "run", str(recipe), "--set",
         f"runs_dir={runs}", *extra],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    runs = tmp_path / "runs"
    out = run(ROOT / "recipes" / "tiny.yaml", runs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = runs / "tiny"
    for stage in STAGES:
        assert (run_dir / stage / "done").exists(), stage
        assert (run_dir / stage / "config.json").exists(), stage
    for stage in ("tokenizer", "pretrain", "sft", "dpo"):
        assert (run_dir / stage / "model" / "config.json").exists(), stage
    assert (run_dir / "corpus" / "train.jsonl").stat().st_size > 0
    assert (run_dir / "instruct" / "train.jsonl").stat().st_size > 0
    index = json.loads((run_dir / "index" / "summary.json").read_text(encoding="utf-8"))
    assert index["source"] == "train.jsonl" and index["passages"] > 0 and index["probe_found_itself"]
    assert not (run_dir / "corpus" / "library.jsonl").exists()
    pre = json.loads((run_dir / "pretrain" / "summary.json").read_text(encoding="utf-8"))
    assert pre["steps"] > 0 and pre["tokens"] > 0
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    assert {"base", "cpt", "sft"} <= set(results["models"])
    bpc = {label: results["models"][label]["bpc"]["bpc"] for label in ("base", "cpt", "sft")}
    assert all(0 < v < 64 for v in bpc.values()) and bpc["cpt"] != bpc["base"], bpc  # pretraining moved the weights
    assert ["base", "rag"] in results["rows"] and ["sft", "closed"] not in results["rows"]
    assert results["rows"][-1] == ["dpo", "closed"]  # base closed-book, every model with retrieval, last closed
    samples = json.loads((run_dir / "chat" / "samples.json").read_text(encoding="utf-8"))
    assert samples and all(s["citations"] for s in samples)  # the chat stage asks with retrieval
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "- [1]" in report or "- **[1]" in report
    for word in ("## Stages", "## Evaluation", "## Sample answers", "| pretrain |", "base", "cpt", "sft"):
        assert word in report, word
    # every JSONL qihuang writes is readable by `datasets` (the format other tools load it with)
    import datasets

    datasets.disable_progress_bars()
    written = [f for f in run_dir.rglob("*.jsonl") if f.stat().st_size and "checkpoints" not in f.parts]
    assert len(written) > 10
    for f in written:
        datasets.load_dataset("json", data_files=str(f), split="train", cache_dir=str(tmp_path / "ds"))
    # A second run reuses every finished stage; removing one stage's marker redoes only that stage.
    (run_dir / "eval" / "done").unlink()
    again = run(ROOT / "recipes" / "tiny.yaml", runs)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(done, skipped)") == len(STAGES) - 1  # chat is not built from eval
    assert (run_dir / "eval" / "done").exists()
    # A changed value reruns its stage and every stage built from it, and says why.
    edited = run(ROOT / "recipes" / "tiny.yaml", runs, "--set", "dpo.beta=0.2")
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert "── stage dpo (stale: config changed: beta; rerunning)" in edited.stdout
    for stage in ("eval", "chat"):
        assert f"── stage {stage} (stale: dpo rebuilt; rerunning)" in edited.stdout, edited.stdout
    assert edited.stdout.count("(done, skipped)") == len(STAGES) - 3
    # --only reruns one stage with the run's own models: chat asks the final (dpo) model, not the base
    only = run(ROOT / "recipes" / "tiny.yaml", runs, "--set", "dpo.beta=0.2", "--only", "chat")
    assert only.returncode == 0, only.stderr[-3000:]
    assert "── stage chat (stale: --only; rerunning)" in only.stdout
    assert only.stdout.count("(done, kept: --only)") == len(STAGES) - 1
    chat = json.loads((run_dir / "chat" / "summary.json").read_text(encoding="utf-8"))
    assert chat["model"] == str(run_dir / "dpo" / "model")
    bad = run(ROOT / "recipes" / "tiny.yaml", runs, "--only", "nonesuch")
    assert bad.returncode != 0 and "not a stage of this recipe" in bad.stderr


def _finished(run_dir: Path, name: str, config: dict) -> None:
    import time

    from qihuang.runs import StageDir

    stage = StageDir(run_dir / name)
    stage.begin(config)
    stage.finish({})
    time.sleep(0.01)  # distinct done-file times


def test_a_stage_recorded_under_earlier_setting_names_is_not_stale(tmp_path: Path) -> None:
    """A pretrain stage finished when its settings were lr / micro_batch / lora_rank is the same build under
    learning_rate / batch_size / lora_r: reused, unless a value changed."""
    from qihuang.config import to_mapping
    from qihuang.pipeline import stale_reason
    from qihuang.pretrain import PretrainConfig
    from qihuang.runs import StageDir

    cfg = PretrainConfig(learning_rate=1e-4, batch_size=2, lora_r=8)
    old = to_mapping(cfg)
    for before, now in (("lr", "learning_rate"), ("micro_batch", "batch_size"), ("lora_rank", "lora_r")):
        old[before] = old.pop(now)
    _finished(tmp_path, "pretrain", old)
    stage = StageDir(tmp_path / "pretrain")

    def why(c: PretrainConfig) -> str | None:
        return stale_reason("pretrain", stage, c, [], [], "m1", ["pretrain"])

    assert why(cfg) is None
    assert why(PretrainConfig(learning_rate=3e-4, batch_size=2, lora_r=8)) == "config changed: learning_rate"
    assert why(PretrainConfig(learning_rate=1e-4, batch_size=4, lora_r=8)) == "config changed: batch_size"


def test_stale_stages_are_named_with_their_reason(tmp_path: Path) -> None:
    import os

    from qihuang.pipeline import stale_reason
    from qihuang.runs import StageDir

    cfgs = {"corpus": {"max_books": 3}, "tokenizer": {"enabled": True}, "pretrain": {"learning_rate": 1e-4}}
    for name, cfg in cfgs.items():
        _finished(tmp_path, name, cfg)
    active = list(cfgs)
    dirs = {n: StageDir(tmp_path / n) for n in cfgs}

    def why(name: str, cfg: dict | None = None, rebuilt: tuple[str, ...] = (), force: tuple[str, ...] = (),
            model: str = "m1") -> str | None:
        return stale_reason(name, dirs[name], cfg or cfgs[name], list(rebuilt), list(force), model, active)

    assert [why(n) for n in cfgs] == [None, None, None]
    assert why("pretrain", {"learning_rate": 3e-4}) == "config changed: learning_rate"
    assert why("pretrain", {"learning_rate": 1e-4, "seq_len": 256}) == "config changed: seq_len"
    assert why("pretrain", {"learning_rate": 1e-4, "tensorboard": True, "log_every": 5}) is None  # reporting only
    assert why("tokenizer", force=("tokenizer",)) == "forced"
    assert why("pretrain", rebuilt=("tokenizer",)) == "tokenizer rebuilt"
    assert why("corpus", rebuilt=("tokenizer",)) is None  # the corpus is not built from the tokenizer
    assert why("pretrain", model="m2") is None  # built before stages recorded their base: nothing to compare
    (dirs["pretrain"].path / "base_model.json").write_text('{"model": "m1"}')
    assert why("pretrain", model="m2") == "base model changed (m1 → m2)" and why("pretrain") is None
    assert why("corpus", model="m2") is None  # the corpus does not use the model
    later = dirs["pretrain"].done_file.stat().st_mtime + 5
    os.utime(dirs["corpus"].done_file, (later, later))  # the corpus rebuilt after pretrain, in an earlier run
    assert why("pretrain") == "corpus newer"
    dirs["pretrain"].done_file.unlink()
    assert why("pretrain", {"learning_rate": 3e-4}) is None  # not finished: it runs anyway, nothing to explain


@pytest.mark.slow
@pytest.mark.parametrize("preset", LAUNCH_PRESETS)
def test_a_training_stage_of_a_recipe_runs_under_accelerate_launch(tmp_path: Path, shared_data: Path,
                                                                   preset: str) -> None:
    """How recipes/qwen7b-8gpu.yaml is run: the data stages in one process, then `accelerate launch -m qihuang run
    RECIPE --only sft` — both processes train it as one and the main one records it (2 gloo processes here)."""
    from tests.finetune.helpers import accelerate_launch, cpu_config

    runs, stages = tmp_path / "runs", "stages=[corpus, index, pretrain, instruct, sft]"
    first = run(ROOT / "recipes" / "tiny.yaml", runs, "--set", stages)
    assert first.returncode == 0, first.stderr[-3000:]
    single = json.loads((runs / "tiny" / "sft" / "summary.json").read_text(encoding="utf-8"))
    launched = accelerate_launch(cpu_config(tmp_path / "launch.yaml", 2, base=preset),
                                 ["run", str(ROOT / "recipes" / "tiny.yaml"), "--set", f"runs_dir={runs}", "--set",
                                  stages, "--only", "sft"])
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads((runs / "tiny" / "sft" / "summary.json").read_text(encoding="utf-8"))
    assert (single["processes"], summary["processes"]) == (1, 2) and summary["steps"] == single["steps"]
    assert summary["sharding"] == SHARDING[preset]
    assert (runs / "tiny" / "sft" / "done").exists() and (runs / "tiny" / "sft" / "model" / "config.json").exists()
