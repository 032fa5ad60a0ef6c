"""`qihuang run RECIPE --dry-run`: every shipped recipe resolves and checks without training (GPU recipes on this
CPU box too); a missing data file, an impossible model or placement is refused naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qihuang.cli import cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if "name" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_passes_its_dry_run(recipe: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run", "--set", f"runs_dir={tmp_path}"])
    assert out.exit_code == 0, out.output
    assert "nothing was trained" in out.output and not any(tmp_path.iterdir())
    assert {"gpu.yaml", "demo.yaml", "tiny.yaml", "qwen7b-8gpu.yaml"} <= {p.name for p in RECIPES}


def test_gpu_recipe_reports_the_device_it_needs(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["run", str(ROOT / "recipes" / "gpu.yaml"), "--dry-run"])
    import torch

    if not torch.cuda.is_available():
        assert out.output.count("needs a GPU (cuda") == 3, out.output  # pretrain, sft, dpo


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nruns_dir: {tmp_path / 'runs'}\n" + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("model: tiny-llama\nstages: [eval]\neval:\n  mcq_files: [eval/nowhere/missing.csv:30]\n",
     "eval: file 'eval/nowhere/missing.csv' not found"),
    ("model: not a model\nstages: [corpus]\n", "is no preset, folder, .gguf file or Hugging Face id"),
    ("model: tiny-llama\nstages: [sft]\nsft:\n  device: cpu\n  precision: fp16\n", "sft.precision: fp16 needs a GPU"),
    ("model: /no/such/file.gguf\nstages: [corpus]\n", "GGUF file /no/such/file.gguf not found"),
])
def test_problems_are_named(tmp_path: Path, text: str, message: str) -> None:
    out = CliRunner().invoke(cli, ["run", str(_recipe(tmp_path, text)), "--dry-run"])
    assert out.exit_code != 0 and message in out.output, out.output
    assert not (tmp_path / "runs").exists()
