"""DPO on the tiny LLaMA: pair checks (chosen == rejected dropped with reason), held-out reward accuracy moves
up after training, pass-through when disabled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qihuang.config import ConfigError
from qihuang.finetune.preference import DPOConfig, check_pair, dpo, load_pairs, preference_metrics
from qihuang.runs import StageDir, read_jsonl, run_stage
from qihuang.template import TemplateError
from tests.finetune.helpers import LAUNCH_PRESETS

QUESTIONS = ["何谓阴阳", "五行相生", "桂枝汤主治", "何谓治未病", "肝之所主", "肾之所藏", "心之所主", "肺之所司"]


def _pairs(n: int) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": QUESTIONS[i % 8] + "？" * (1 + i // 8)}],
             "chosen": "答曰：" + QUESTIONS[i % 8], "rejected": "不知不知不知"} for i in range(n)]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from qihuang.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("record,reason", [
    ({"conversations": [{"from": "human", "value": "Q"}], "chosen": "同", "rejected": " 同 "}, "chosen_equals_rejected"),
    ({"conversations": [{"from": "human", "value": "Q"}], "chosen": "", "rejected": "B"}, "empty_answer"),
    ({"conversations": [{"from": "gpt", "value": "Q"}], "chosen": "A", "rejected": "B"}, "roles_out_of_order"),
    ({"conversations": [{"from": "human", "value": " "}], "chosen": "A", "rejected": "B"}, "empty_content"),
    ({"conversations": [{"from": "human", "value": "长" * 300}], "chosen": "A", "rejected": "B"}, "prompt_too_long"),
    ({"conversations": [{"from": "human", "value": "Q"}]}, "no_chosen_rejected"),
])
def test_bad_pairs_rejected_with_reason(tok: Any, record: dict[str, Any], reason: str) -> None:
    with pytest.raises(TemplateError) as exc:
        check_pair(record, tok, max_length=128)
    assert exc.value.reason == reason


def test_pair_shapes(tok: Any) -> None:
    p = check_pair({"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}, tok, 128)
    assert p.prompt == [{"role": "user", "content": "Q"}] and p.chosen == "A" and p.rejected == "B"
    factory = check_pair({"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "A"},
                          "rejected": {"from": "gpt", "value": "B"}}, tok, 128)  # LLaMA-Factory's sharegpt shape
    assert factory.prompt == [{"role": "user", "content": "Q"}] and (factory.chosen, factory.rejected) == ("A", "B")
    medical = check_pair({"system": "S", "history": [["q1", "a1"]], "question": "Q", "response_chosen": "A",
                          "response_rejected": "B"}, tok, 128)  # MedicalGPT's reward/DPO shape
    assert medical.prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                              {"role": "assistant", "content": "a1"}, {"role": "user", "content": "Q"}]
    assert (medical.chosen, medical.rejected) == ("A", "B")
    with pytest.raises(TemplateError, match="bad_history"):
        check_pair({"history": ["q1"], "question": "Q", "response_chosen": "A", "response_rejected": "B"}, tok, 128)
    row = check_pair(_pairs(1)[0], tok, 128, system="S").row()
    assert row["prompt"][0] == {"role": "system", "content": "S"} and row["chosen"][0]["role"] == "assistant"


def test_metrics_and_config() -> None:
    ref = [(-10.0, -10.0), (-5.0, -4.0)]
    assert preference_metrics(ref, ref, 0.1)["reward_accuracy"] == 0.0
    after = preference_metrics(ref, [(-9.0, -11.0), (-5.5, -3.5)], 0.1)
    assert after["reward_accuracy"] == 0.5 and after["reward_margin"] == pytest.approx(0.05)
    with pytest.raises(ConfigError):
        DPOConfig(beta=0)


def test_dpo_raises_heldout_reward_accuracy(tmp_path: Path, tiny_model_dir: Path, tok: Any) -> None:
    data = tmp_path / "pairs.jsonl"
    bad = [{"conversations": [{"from": "human", "value": "同"}], "chosen": "一样", "rejected": "一样"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _pairs(40) + bad), encoding="utf-8")
    pairs, rejects = load_pairs([data], tok, 128, None)
    assert len(pairs) == 40 and [r["reason"] for r in rejects] == ["chosen_equals_rejected"]
    cfg = DPOConfig(data=[data], max_steps=6, batch_size=4, learning_rate=1e-2, max_length=128,
                    heldout_fraction=0.2, lora_r=8, save_steps=3)
    out = StageDir(tmp_path / "dpo")
    s = run_stage(out, cfg, lambda: dpo(cfg, tiny_model_dir, out))
    assert s["heldout_pairs"] == 8 and s["train_pairs"] == 32 and s["rejected"] == {"chosen_equals_rejected": 1}
    assert s["reward_accuracy_before"] == 0.0
    assert s["reward_accuracy_after"] >= 0.75 and s["reward_margin_after"] > 0
    assert s["logp_margin_after"] > s["logp_margin_before"]
    assert (out.path / "model" / "config.json").exists() and (out.path / "adapter").is_dir()
    assert [r["reason"] for r in read_jsonl(out.path / "rejects.jsonl")] == ["chosen_equals_rejected"]


def test_disabled_dpo_passes_the_model_through(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = DPOConfig(enabled=False)
    out = StageDir(tmp_path / "dpo")
    s = run_stage(out, cfg, lambda: dpo(cfg, tiny_model_dir, out))
    assert s["enabled"] is False
    assert (out.path / "model" / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_full_dpo_uses_a_frozen_reference_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _pairs(16)), encoding="utf-8")
    cfg = DPOConfig(data=[data], method="full", max_steps=2, batch_size=4, learning_rate=1e-3, max_length=128,
                    heldout_fraction=0.25, save_steps=10)
    out = StageDir(tmp_path / "dpo")
    s = run_stage(out, cfg, lambda: dpo(cfg, tiny_model_dir, out))
    assert s["adapter"] is None and s["trainable"]["trainable"] == s["trainable"]["total"]
    assert s["reward_margin_after"] > 0 and s["reward_accuracy_after"] > s["reward_accuracy_before"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", LAUNCH_PRESETS)
def test_dpo_ddp_two_processes_match_single(tmp_path: Path, tiny_model_dir: Path, preset: str) -> None:
    """`accelerate launch` with 2 CPU processes (gloo), 1 pair per process and 2 accumulation steps, against one
    process with 4 pairs a step: the same pairs make each step's global batch, so the per-step DPO losses and the
    saved weights agree up to float32 rounding; only the main process logs and writes."""
    from tests.finetune.helpers import (
        SHARDING, accelerate_launch, assert_loads, assert_same_losses, assert_same_weights, cpu_config, flags,
        step_losses,
    )

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _pairs(40)), encoding="utf-8")
    common = dict(max_steps=6, learning_rate=1e-2, max_length=128, heldout_fraction=0.2, lora_r=8, lora_dropout=0.0,
                  save_steps=5, device="cpu")
    single = StageDir(tmp_path / "single")
    cfg = DPOConfig(data=[data], batch_size=4, **common)  # type: ignore[arg-type]
    s = run_stage(single, cfg, lambda: dpo(cfg, tiny_model_dir, single))
    ddp = tmp_path / "ddp"
    args = ["dpo", "--model", str(tiny_model_dir), "--out", str(ddp), "--data", str(data),
            *flags({**common, "batch_size": 1, "grad_accum": 2})]
    run = accelerate_launch(cpu_config(tmp_path / "launch.yaml", 2, base=preset), args)
    assert run.returncode == 0, run.stderr[-3000:]
    d = json.loads((ddp / "summary.json").read_text())
    assert (d["processes"], d["global_batch"], s["processes"], s["global_batch"]) == (2, 4, 1, 4)
    assert (d["sharding"], s["sharding"]) == (SHARDING[preset], "none")
    assert d["steps"] == s["steps"] == 6 and d["reward_accuracy_after"] == s["reward_accuracy_after"]
    single_losses = step_losses(single.path)
    assert single_losses[6] < single_losses[1]  # the steps compared do train
    assert_same_losses(single_losses, step_losses(ddp), rel=1e-5)
    assert_same_weights(single.path / "model", ddp / "model")
    assert (ddp / "done").exists() and (ddp / "adapter" / "adapter_config.json").exists()
    assert_loads(ddp / "model")
