"""`qihuang eval paired`: two answer files of the same questions, paired differences overall and by type, and the
errors a wrong pair of files gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qihuang.cli import cli
from qihuang.config import ConfigError
from qihuang.evaluate.paired import check_aligned, load_predictions, paired


def _rows(scores: list[float], types: list[str], **extra: list[object]) -> list[dict[str, object]]:
    rows = []
    for i, (s, t) in enumerate(zip(scores, types, strict=True)):
        row: dict[str, object] = {"question": f"问题{i}", "task_type": t, "rouge_l": s, "faithfulness": s / 2}
        row.update({k: v[i] for k, v in extra.items()})
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


TYPES = ["出处"] * 6 + ["名词概念"] * 4


def test_differences_overall_and_by_type() -> None:
    a = _rows([0.5] * 10, TYPES, right_book=[True] * 10, guard_fallback=[True] * 4 + [False] * 6)
    b = _rows([0.8] * 6 + [0.4] * 4, TYPES, right_book=[True] * 9 + [False], guard_fallback=[False] * 10)
    r = paired(a, b, n_boot=200, seed=1)
    assert r["n"] == 10
    rouge = r["overall"]["rouge_l"]
    assert rouge["a"] == pytest.approx(0.5) and rouge["b"] == pytest.approx(0.64)
    assert rouge["diff"] == pytest.approx(0.14) and rouge["lo"] <= 0.14 <= rouge["hi"]
    assert r["overall"]["citation_book"]["diff"] == pytest.approx(-0.1)
    assert "model_rouge_l" not in r["overall"]  # neither file has it
    assert list(r["by_type"]) == ["出处", "名词概念"]  # most questions first
    assert r["by_type"]["出处"]["rouge_l"]["diff"] == pytest.approx(0.3)
    assert r["by_type"]["出处"]["rouge_l"]["lo"] == pytest.approx(0.3)  # every pair moved by the same amount
    assert r["by_type"]["名词概念"]["rouge_l"]["diff"] == pytest.approx(-0.1)
    assert r["by_type"]["名词概念"]["faithfulness"]["diff"] == pytest.approx(-0.05)
    assert r["guard_fallback"] == {"a": 4, "b": 0}


def test_the_command_prints_tables_and_writes_json(tmp_path: Path) -> None:
    fa = _write(tmp_path / "a.jsonl", _rows([0.2, 0.4, 0.6, 0.8], ["出处", "出处", "原文填空", "原文填空"]))
    fb = _write(tmp_path / "b.jsonl", _rows([0.3, 0.5, 0.6, 1.0], ["出处", "出处", "原文填空", "原文填空"]))
    out = tmp_path / "pair.json"
    res = CliRunner().invoke(cli, ["eval", "paired", str(fa), str(fb), "--labels", "run,ablation", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| rouge_l | 50.0 | 60.0 | +10.0 [" in res.output
    assert "| 出处 | 2 | +10.0 [+10.0, +10.0]" in res.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["labels"] == ["run", "ablation"] and data["overall"]["rouge_l"]["diff"] == pytest.approx(0.1)


def test_files_of_other_questions_are_refused(tmp_path: Path) -> None:
    a = _rows([0.5, 0.5], ["出处", "出处"])
    b = _rows([0.5, 0.5], ["出处", "出处"])
    b[1]["question"] = "别的问题"
    with pytest.raises(ConfigError, match=r"answer 2 differs.*not the same questions"):
        check_aligned(a, b, "a.jsonl", "b.jsonl")
    with pytest.raises(ConfigError, match="has 2 answers and b.jsonl 1"):
        check_aligned(a, b[:1], "a.jsonl", "b.jsonl")
    fa = _write(tmp_path / "a.jsonl", a)
    fb = _write(tmp_path / "b.jsonl", b)
    res = CliRunner().invoke(cli, ["eval", "paired", str(fa), str(fb)])
    assert isinstance(res.exception, ConfigError) and "answer 2 differs" in str(res.exception)


@pytest.mark.parametrize(("text", "message"), [
    ('{"question": "q", "task_type": "出处", "rouge_l": 0.5}\n{"question": "q2", "task_', r"bad\.jsonl:2: not valid JSON"),
    ('{"question": "q", "task_type": "出处"}\n', r"bad\.jsonl:1: missing rouge_l"),
    ('[1, 2]\n', r"bad\.jsonl:1: expected a JSON object"),
    ("\n\n", r"bad\.jsonl: no answers"),
])
def test_a_broken_file_is_named_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_predictions(bad)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ConfigError, match="cannot read predictions"):
        load_predictions(bad)
