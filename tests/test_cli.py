"""The `qihuang` command: every stage is listed; bad recipes fail before any work with the key and file named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

STAGE_COMMANDS = ["run", "models", "corpus", "tokenizer", "pretrain", "instruct", "sft", "dpo", "merge", "export", "eval", "serve",
                  "chat", "search"]


def qihuang(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from qihuang.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_stage() -> None:
    out = qihuang("--help")
    assert out.returncode == 0, out.stderr
    for name in STAGE_COMMANDS:
        assert f"  {name} " in out.stdout, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: t\npretrain:\n  max_stepz: 3\n", "pretrain: unknown key(s) ['max_stepz']"),
        ("name: t\nsft: 3\n", ".sft: expected a mapping"),
        ("name: t\nstages: [corpus, train]\n", "unknown stage(s) ['train']"),
        ("name: t\nthreads: two\n", ".threads: expected an integer"),
    ],
)
def test_bad_recipe_fails_before_work(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text, encoding="utf-8")
    out = qihuang("run", str(recipe), cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "bad.yaml" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_set_override_is_type_checked(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\n", encoding="utf-8")
    out = qihuang("run", str(recipe), "--set", "pretrain.max_steps=lots", cwd=tmp_path)
    assert out.returncode == 2 and "pretrain.max_steps: expected an integer" in out.stderr
