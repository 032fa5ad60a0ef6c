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
        ("name: t\npretrain:\n  lr: 1.0e-4\n", "pretrain: unknown key(s) ['lr']; 'lr': did you mean 'learning_rate'?"),
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


@pytest.mark.parametrize(("old", "new"), [("--lr", "--learning-rate"), ("--micro-batch", "--batch-size"),
                                          ("--lora-rank", "--lora-r")])
def test_an_earlier_pretrain_flag_names_the_one_to_use(tmp_path: Path, old: str, new: str) -> None:
    from click.testing import CliRunner

    from qihuang.pretrain import pretrain_cli

    passages = tmp_path / "p.jsonl"
    passages.write_text('{"text": "x"}\n', encoding="utf-8")
    args = ["--train", str(passages), "--heldout", str(passages), "--out", str(tmp_path / "out")]
    out = CliRunner().invoke(pretrain_cli, [*args, old, "2"])
    assert out.exit_code == 2 and f"{old} is now {new}" in out.output, out.output
    assert not (tmp_path / "out").exists()
    assert old not in CliRunner().invoke(pretrain_cli, ["--help"]).output  # hidden: only the name now is listed
