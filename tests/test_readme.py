"""Every command in the README's shell blocks runs as printed: the install/test scripts exist, `qihuang` commands
that can run here run (a dry run), and a multi-GPU launch names an existing accelerate config and only flags its
stage command accepts (it needs GPUs to run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qihuang.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The commands of the README's ```bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                cmds.append(words)
    return cmds


def _flags_accepted(stage_cmd: list[str]) -> None:
    out = CliRunner().invoke(cli, [*stage_cmd[:1], "--help"])
    assert out.exit_code == 0, out.output
    for word in stage_cmd[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in out.output, f"{word} is not an option of `qihuang {stage_cmd[0]}`"


def test_readme_commands_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the checkout
    cmds = readme_commands()
    assert cmds and any(c[:2] == ["bash", "scripts/demo.sh"] for c in cmds)
    for words in cmds:
        if words[0] == "bash":
            assert (ROOT / words[1]).is_file(), words
        elif words[0] == "qihuang":
            assert "--dry-run" in words or "--help" in words, f"add a runnable README command to this test: {words}"
            out = CliRunner().invoke(cli, [*words[1:], "--set", f"runs_dir={tmp_path}"] if words[1] == "run"
                                     else words[1:])
            assert out.exit_code == 0, (words, out.output)
        elif words[:2] == ["accelerate", "launch"]:
            config = ROOT / words[words.index("--config_file") + 1]
            assert config.is_file() and yaml.safe_load(config.read_text(encoding="utf-8")), config
            module = words.index("-m")
            assert words[module + 1] == "qihuang"
            _flags_accepted(words[module + 2:])
        else:
            raise AssertionError(f"README command this test does not know how to check: {words}")
