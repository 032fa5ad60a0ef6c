"""End to end offline build on invented passages: output files, formats, by-passage hold-out, bad input, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qihuang.config import ConfigError, from_mapping
from qihuang.instruct import InstructConfig, build_instructions
from qihuang.instruct.cli import instruct_cli
from qihuang.runs import StageDir, read_jsonl, run_stage

from .conftest import write_passages


def test_build_writes_all_outputs(tmp_path: Path, passages_file: Path, base_cfg: InstructConfig) -> None:
    out = StageDir(tmp_path / "instruct")
    summary = run_stage(out, base_cfg, lambda: build_instructions(base_cfg, passages_file, out))
    for name in ("train.jsonl", "train_alpaca.jsonl", "heldout_qa.jsonl", "rejects.jsonl", "card.md", "card.json",
                 "card.png", "summary.json", "done"):
        assert (out.path / name).exists(), name
    train = list(read_jsonl(out.path / "train.jsonl"))
    held = list(read_jsonl(out.path / "heldout_qa.jsonl"))
    domain = [r for r in train if r["meta"].get("source") != "general"]
    general = [r for r in train if r["meta"].get("source") == "general"]
    assert domain and general and summary["pairs_in_train"] > 20
    for r in domain:
        conv = r["conversations"]
        assert [m["from"] for m in conv] == ["human", "gpt"] * (len(conv) // 2)
        for key in ("passage_id", "book", "section", "category", "span", "task_type", "book_span"):
            assert key in r["meta"]
        assert r["meta"]["turns"] == len(conv) // 2 <= base_cfg.max_turns
    assert any(r["meta"]["turns"] > 1 for r in domain)
    # held out by passage, never in train
    held_ids = {h["meta"]["passage_id"] for h in held}
    assert held and held_ids.isdisjoint({r["meta"]["passage_id"] for r in domain})
    passages = {r["id"]: r["text"] for r in read_jsonl(passages_file)}
    for h in held:
        assert h["question"] and h["reference"] and h["source"] == passages[h["meta"]["passage_id"]]
    alpaca = list(read_jsonl(out.path / "train_alpaca.jsonl"))
    assert len(alpaca) == len(train) and all(a["instruction"] and a["output"] for a in alpaca)
    card = json.loads((out.path / "card.json").read_text(encoding="utf-8"))
    assert card["dialogues"] == len(domain) and sum(card["by_task_type"].values()) == card["pairs_in_train"]
    assert (out.path / "card.png").read_bytes()[:4] == b"\x89PNG"
    assert "中医古籍指令数据种类概览" in (out.path / "card.md").read_text(encoding="utf-8")
    datasets = pytest.importorskip("datasets")
    for name in ("train.jsonl", "train_alpaca.jsonl", "heldout_qa.jsonl"):  # loadable by `datasets`
        assert len(datasets.load_dataset("json", data_files=str(out.path / name), split="train")) > 0


def test_deterministic(tmp_path: Path, passages_file: Path, base_cfg: InstructConfig) -> None:
    a, b = StageDir(tmp_path / "a"), StageDir(tmp_path / "b")
    build_instructions(base_cfg, passages_file, a)
    build_instructions(base_cfg, passages_file, b)
    assert (a.path / "train.jsonl").read_text() == (b.path / "train.jsonl").read_text()


def test_missing_field_names_field_and_line(tmp_path: Path, base_cfg: InstructConfig) -> None:
    path = write_passages(tmp_path / "p.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[2])
    del bad["section"]
    lines[2] = json.dumps(bad, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p\.jsonl:3: passage is missing field 'section'"):
        build_instructions(base_cfg, path, StageDir(tmp_path / "out"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_instructions(base_cfg, tmp_path / "nope.jsonl", StageDir(tmp_path / "out"))


@pytest.mark.parametrize(("key", "value", "match"), [
    ("heldout_fraction", 1.5, "heldout_fraction"), ("generators", ["magic"], "unknown"),
    ("type_targets", ["出处=2"], "type_targets"), ("teacher_judge", True, "teacher_url"),
    ("teacher_url", "ftp://x", "http"), ("concurrency", 0, "concurrency"), ("general_ratio", 1.0, "general_ratio"),
])
def test_config_checks(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_mapping(InstructConfig, {key: value})


def test_every_field_documented() -> None:
    from qihuang.config import field_docs

    docs = field_docs(InstructConfig)
    assert all(f.name in docs for f in dataclasses.fields(InstructConfig))


def test_refine_and_teacher_settings_are_the_config() -> None:
    """The refine thresholds and teacher settings are declared once (RefineSettings, TeacherSettings) and inherited:
    recipe keys and flags stay flat, their --help is the field's docstring, and the machinery takes the config."""
    from qihuang.config import field_docs
    from qihuang.instruct.settings import RefineSettings, TeacherSettings

    cfg = from_mapping(InstructConfig, {"grounding_threshold": 0.4, "teacher_url": "http://127.0.0.1:9/v1",
                                        "temperature": 0.2, "max_tokens": 99})
    assert isinstance(cfg, RefineSettings) and isinstance(cfg, TeacherSettings)
    assert cfg.grounding_threshold == 0.4 and cfg.params == {"temperature": 0.2, "max_tokens": 99}
    own = {f.name for f in dataclasses.fields(InstructConfig)}
    for part in (RefineSettings, TeacherSettings):
        names = {f.name for f in dataclasses.fields(part)}
        assert names <= own and not names & set(InstructConfig.__annotations__)  # inherited, not redeclared
        assert all(field_docs(part)[n] == field_docs(InstructConfig)[n] for n in names)
    help_text = CliRunner().invoke(instruct_cli, ["refine", "--help"]).output
    assert "--grounding-threshold" in help_text and "--teacher-url" in help_text
    with pytest.raises(ConfigError, match="instruct.grounding_threshold"):
        RefineSettings(grounding_threshold=1.5)
    with pytest.raises(ConfigError, match="instruct.rpm"):
        InstructConfig(rpm=0)


def test_max_pairs_and_type_targets(tmp_path: Path, passages_file: Path, base_cfg: InstructConfig) -> None:
    cfg = dataclasses.replace(base_cfg, max_pairs=12, heldout_fraction=0.0, general_ratio=0.0,
                              type_targets=["原文填空=0.5"], pairs_per_passage=6)
    out = StageDir(tmp_path / "o")
    s = build_instructions(cfg, passages_file, out)
    assert s["pairs_in_train"] == 12 and s["by_task_type"]["原文填空"] == 6 and s["general_records"] == 0


def test_cli_generate_refine_card_build(tmp_path: Path, passages_file: Path, lexicon_file: Path,
                                        general_file: Path) -> None:
    runner = CliRunner()
    common = ["--passages", str(passages_file), "--out", str(tmp_path / "st"), "--lexicon", str(lexicon_file),
              "--general-data", str(general_file)]
    r = runner.invoke(instruct_cli, ["generate", *common])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["generated_pairs"] > 0
    r = runner.invoke(instruct_cli, ["refine", *common, "--heldout-fraction", "0.3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(instruct_cli, ["card", "--out", str(tmp_path / "st")])
    assert r.exit_code == 0 and "By task type" in r.output
    r = runner.invoke(instruct_cli, ["build", *common[:2], "--out", str(tmp_path / "b"), *common[4:]])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "done").exists()
    r = runner.invoke(instruct_cli, ["build", "--passages", str(tmp_path / "missing.jsonl"), "--out",
                                     str(tmp_path / "c"), *common[4:]])
    assert r.exit_code != 0 and "does not exist" in r.output
