"""Merge a run's adapters in recorded order with a logits check and a model card (GGUF export: test_gguf.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qihuang.finetune.outputs import load_start_model, save_outputs
from qihuang.merge import merge_run
from qihuang.template import encode_prompt, render_prompt

MSGS = [{"role": "user", "content": "何谓阴阳？"}]


def _adapter_stage(run: Path, stage: str, start: Path, seed: int) -> None:
    """A stage output as the trainers write it: a non-zero LoRA adapter on `start`, merged model, lineage."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok, record = load_start_model(start)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    save_outputs(peft_model, tok, run / stage, stage=stage, base=record, method="lora", data=[f"{stage}.jsonl"])
    (run / stage / "summary.json").write_text(json.dumps({"val_loss_before": 2.0, "val_loss_after": 1.5}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("run")
    _adapter_stage(run, "sft", tiny_model_dir, 1)
    _adapter_stage(run, "dpo", run / "sft" / "model", 2)
    return run


def _logits(model_dir: Path, tok: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([encode_prompt(tok, MSGS)])).logits


def test_merge_follows_recorded_order_and_matches_adapters(run_dir: Path, tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qihuang.models import load_tokenizer

    report = merge_run(run_dir)
    assert report["verified"] and [s["stage"] for s in report["steps"]] == ["sft", "dpo"]
    assert report["base"] == str(tiny_model_dir)
    assert all(s["max_abs_diff"] < 1e-3 and s["top1_agreement"] == 1.0 for s in report["steps"])
    merged = run_dir / "merged"
    tok = load_tokenizer(merged)
    # independent check: base + sft adapter (merged) + dpo adapter applied unmerged
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    step1 = PeftModel.from_pretrained(base, str(run_dir / "sft" / "adapter")).merge_and_unload()
    step2 = PeftModel.from_pretrained(step1, str(run_dir / "dpo" / "adapter")).eval()
    with torch.no_grad():
        on_base = step2(input_ids=torch.tensor([encode_prompt(tok, MSGS)])).logits
    merged_logits = _logits(merged, tok)
    assert torch.allclose(on_base, merged_logits, atol=1e-4)
    assert not torch.allclose(_logits(tiny_model_dir, tok), merged_logits, atol=1e-2)  # adapters did something
    card = (merged / "README.md").read_text(encoding="utf-8")
    assert "| 1 | sft | lora | sft.jsonl" in card and "| 2 | dpo | lora | dpo.jsonl" in card
    assert "val_loss_after=1.5" in card and str(tiny_model_dir) in card
    assert render_prompt(tok, MSGS) == render_prompt(load_tokenizer(tiny_model_dir), MSGS)


def test_start_from_adapter_dir_equals_merged(run_dir: Path) -> None:
    import torch

    model, tok, record = load_start_model(run_dir / "sft" / "adapter")
    assert record["kind"] == "adapter"
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([encode_prompt(tok, MSGS)])).logits
    assert torch.allclose(logits, _logits(run_dir / "sft" / "model", tok), atol=1e-4)
