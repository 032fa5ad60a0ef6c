"""SFT on the tiny LLaMA: data checks and counting, mixing, curriculum, packing without cross-attention,
LoRA training that lowers held-out loss, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qihuang.config import ConfigError
from qihuang.finetune.data import Example, curriculum, load_examples, mix, to_dataset
from qihuang.finetune.sft import SFTConfig, _lora_config, _source_limits, build_data, sft
from qihuang.runs import StageDir, read_jsonl, run_stage
from qihuang.template import IGNORE_INDEX
from tests.finetune.helpers import LAUNCH_PRESETS

QA = [("何谓阴阳", "阴阳者天地之道也"), ("五行相生", "木生火火生土"), ("桂枝汤主治", "太阳中风汗出恶风"),
      ("何谓治未病", "上工治未病"), ("肝之所主", "肝主疏泄藏血"), ("肾之所藏", "肾藏精主骨")]


def _dialogues(n: int, multi_every: int = 3) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        if i % multi_every == 0:
            conv += [{"from": "human", "value": "请再说一遍"}, {"from": "gpt", "value": a}]
        out.append({"conversations": conv, "meta": {"difficulty": (i * 7 % 10) / 10}})
    return out


BAD_LINES = [
    {"conversations": [{"from": "human", "value": "只有问题"}]},
    {"conversations": [{"from": "gpt", "value": "先答"}, {"from": "human", "value": "后问"}]},
    {"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "空问"}]},
    {"conversations": [{"from": "human", "value": "长" * 400}, {"from": "gpt", "value": "太长"}]},
]


def _write(path: Path, records: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + extra, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from qihuang.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_config_cross_checks() -> None:
    with pytest.raises(ConfigError):
        SFTConfig(data=[Path("a"), Path("b")], data_ratios=[1.0])
    with pytest.raises(ConfigError):
        SFTConfig(val_fraction=0.0, early_stopping_patience=2)
    with pytest.raises(ConfigError):
        SFTConfig(max_steps=0)


def test_bad_input_is_counted_and_listed(tmp_path: Path, tok: Any) -> None:
    path = _write(tmp_path / "d.jsonl", _dialogues(4) + BAD_LINES, extra="{not json\n")
    cfg = SFTConfig(data=[path], max_length=96, val_fraction=0.25)
    train, val, summary = build_data(cfg, tok, tmp_path)
    assert summary["rejected"] == {"no_assistant_turn": 1, "roles_out_of_order": 1, "empty_content": 1,
                                   "too_long": 1, "bad_json": 1}
    assert summary["n_kept"] == 4 and len(train) + len(val) == 4
    rejects = list(read_jsonl(tmp_path / "rejects.jsonl"))
    assert sorted(r["index"] for r in rejects) == [4, 5, 6, 7, 8]
    assert {r["reason"] for r in rejects} == set(summary["rejected"])


def test_mix_ratios_and_curriculum(tmp_path: Path, tok: Any) -> None:
    a = load_examples(_write(tmp_path / "a.jsonl", _dialogues(6)), tok, 128)
    b = load_examples(_write(tmp_path / "b.json", []), tok, 128)
    assert b == []
    b = [Example(e.input_ids, e.labels, "b", e.index, e.difficulty) for e in a[:2]]
    mixed = mix([a, b], [1.0, 3.0], total=12, seed=0)
    assert len(mixed) == 12 and sum(e.source == "b" for e in mixed) == 9  # 3/4 of 12, small source repeated
    ordered = curriculum(a, stages=3, seed=0)
    buckets = [[e.difficulty for e in ordered[i: i + 2]] for i in range(0, 6, 2)]
    assert max(buckets[0]) <= min(buckets[1]) and max(buckets[1]) <= min(buckets[2])
    assert curriculum(a, stages=0) == a
    assert len(load_examples(tmp_path / "a.jsonl", tok, 128, limit=2, seed=1)) == 2
    cfg = SFTConfig(data=[tmp_path / "a.jsonl", tmp_path / "b.json"], data_ratios=[1.0, 3.0], max_samples=8,
                    val_fraction=0.0, early_stopping_patience=0)
    assert _source_limits(cfg) == [3, 7]


def test_packing_resets_positions_without_cross_attention(tmp_path: Path, tok: Any, tiny_model_dir: Path) -> None:
    import torch
    from qihuang.models import load_model
    from qihuang.finetune.data import PackedCollator

    examples = load_examples(_write(tmp_path / "a.jsonl", _dialogues(6)), tok, 128)
    ds = to_dataset(examples, packing=True, max_length=128, stages=0)
    assert len(ds) < len(examples)
    assert sum(sum(r) for r in ds["seq_lengths"]) == sum(len(e.input_ids) for e in examples)
    row = max(range(len(ds)), key=lambda i: len(ds[i]["seq_lengths"]))
    assert len(ds[row]["seq_lengths"]) >= 2
    other = min(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    collator = PackedCollator(tok.pad_token_id)
    batch = collator([ds[row], ds[other]])  # two rows: the shorter is right-padded
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 2
    assert collator.tokens == len(ds[row]["input_ids"]) + len(ds[other]["input_ids"])
    collator([ds[other]])
    assert collator.trained_tokens(1) == collator.batch_tokens[0] and len(collator.batch_tokens) == 2
    pad_from = len(ds[other]["input_ids"])
    assert (batch["labels"][1, pad_from:] == IGNORE_INDEX).all()
    model, _ = load_model(tiny_model_dir)
    model.eval()
    lengths = ds[row]["seq_lengths"]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for n in lengths:
            alone = model(input_ids=batch["input_ids"][:, start: start + n], use_cache=False).logits[0]
            assert torch.allclose(packed[start: start + n], alone, atol=1e-4)
            assert batch["position_ids"][0, start] == 0 and batch["labels"][0, start] == IGNORE_INDEX
            start += n
        batched = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        assert torch.allclose(batched[0], packed, atol=1e-4)  # the padded neighbour row changes nothing
    plain = PackedCollator(tok.pad_token_id)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]},
                                              {"input_ids": [8], "labels": [-100]}])
    assert plain["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and "position_ids" not in plain


def test_new_tokens_become_trainable(tiny_model_dir: Path) -> None:
    from qihuang.models import load_model

    model, tok = load_model(tiny_model_dir)
    assert _lora_config(SFTConfig(), tok, model).trainable_token_indices is None
    tok.add_tokens(["阴阳", "桂枝汤"])
    cfg = _lora_config(SFTConfig(lora_targets=["q_proj", "v_proj"]), tok, model)
    assert sorted(cfg.trainable_token_indices) == [len(tok) - 2, len(tok) - 1]
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert _lora_config(SFTConfig(train_new_tokens=False), tok, model).trainable_token_indices is None


def test_lora_layers_adapt_only_the_top_layers(tiny_model_dir: Path) -> None:
    """LoRA in the top N layers only: lower layers get no adapter, and backprop leaves them without gradients."""
    import torch
    from peft import get_peft_model

    from qihuang.config import ConfigError
    from qihuang.models import load_model

    model, tok = load_model(tiny_model_dir)
    n = model.config.num_hidden_layers
    cfg = _lora_config(SFTConfig(lora_layers=1, train_new_tokens=False), tok, model)
    assert cfg.layers_to_transform == [n - 1] and "q_proj" in cfg.target_modules
    peft_model = get_peft_model(model, cfg)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in peft_model.named_parameters()
               if p.requires_grad}
    assert adapted == {str(n - 1)}
    ids = torch.tensor([[5, 6, 7, 8]])
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)
    with pytest.raises(ConfigError, match="train_new_tokens"):
        SFTConfig(lora_layers=2)
    with pytest.raises(ConfigError, match="lora_layers"):
        SFTConfig(lora_layers=-1, train_new_tokens=False)


def test_sft_lora_end_to_end_and_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from qihuang.template import chat_defaults, render_prompt

    data = _write(tmp_path / "train.jsonl", _dialogues(24) + BAD_LINES[:2])
    held = _write(tmp_path / "qa.jsonl", [{"question": q, "reference": a, "source": "t", "meta": {}} for q, a in QA])
    cfg = SFTConfig(data=[data], eval_data=held, max_length=96, max_steps=8, eval_steps=4, batch_size=4,
                    learning_rate=2e-2, lora_r=8, qa_samples=2, qa_max_new_tokens=4, early_stopping_patience=0,
                    system_prompt="你是中医古籍助手。")
    out = StageDir(tmp_path / "sft")
    s = run_stage(out, cfg, lambda: sft(cfg, tiny_model_dir, out))
    assert s["val_loss_after"] < s["val_loss_before"] - 0.05
    assert s["train_loss_after"] < s["train_loss_before"]
    assert s["data"]["n_rejected"] == 2 and s["steps"] == 8 and s["tokens_per_s"] > 0
    assert (s["device"], s["precision"]) == ("cpu", "fp32")  # no GPU here: `placement.resolve` picks the CPU
    assert s["qa_rouge_l_before"] is not None and s["best_checkpoint"]
    assert (out.path / "adapter" / "adapter_config.json").exists() and (out.path / "loss.png").exists()
    assert any("loss" in m for m in out.metrics().read())
    evals = [m for m in out.metrics().read() if "eval_loss" in m]  # before, at steps 4 and 8 (the last reused)
    assert [m["step"] for m in evals] == [0, 4, 8] and round(evals[-1]["eval_loss"], 4) == s["val_loss_after"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tuned = AutoModelForCausalLM.from_pretrained(str(out.path / "model"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not base.state_dict()[name].equal(tuned.state_dict()[name])
    from qihuang.models import load_tokenizer

    msgs = [{"role": "user", "content": "何谓阴阳"}]
    assert render_prompt(load_tokenizer(out.path / "model"), msgs) == render_prompt(load_tokenizer(tiny_model_dir), msgs)
    assert chat_defaults(out.path / "model") == {"system_prompt": "你是中医古籍助手。"}
    lineage = json.loads((out.path / "lineage.json").read_text())
    assert lineage["base"] == str(tiny_model_dir) and lineage["adapter"] == "adapter"
    # resume: a run killed before its `done` picks up from its last checkpoint instead of restarting
    out.done_file.unlink()
    cfg2 = SFTConfig(**{**cfg.__dict__, "max_steps": 9, "qa_samples": 0})
    s2 = run_stage(out, cfg2, lambda: sft(cfg2, tiny_model_dir, out))
    assert s2["resumed_from"] and s2["resumed_from"].endswith("checkpoint-8") and s2["steps"] == 9
    # a finished stage rebuilt (--force, or stale) starts afresh: its old checkpoints are not resumed from
    s3 = run_stage(out, cfg2, lambda: sft(cfg2, tiny_model_dir, out), force=True)
    assert s3["resumed_from"] is None and s3["steps"] == 9


def test_neftune_noise_reaches_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`neftune_noise_alpha` puts noise on the embeddings the trainer trains on: two runs without it train the same
    adapter, one with it another (and a negative alpha is refused)."""
    from safetensors.torch import load_file

    data = _write(tmp_path / "train.jsonl", _dialogues(12))

    def adapter(name: str, alpha: float | None) -> dict[str, Any]:
        cfg = SFTConfig(data=[data], max_length=96, max_steps=2, batch_size=4, learning_rate=1e-2, lora_r=4,
                        val_fraction=0, qa_samples=0, early_stopping_patience=0, neftune_noise_alpha=alpha)
        out = StageDir(tmp_path / name)
        run_stage(out, cfg, lambda: sft(cfg, tiny_model_dir, out))
        return load_file(str(out.path / "adapter" / "adapter_model.safetensors"))

    plain, again, noisy = adapter("a", None), adapter("b", None), adapter("c", 50.0)
    assert all(plain[k].equal(again[k]) for k in plain)
    assert any(not plain[k].equal(noisy[k]) for k in plain)
    with pytest.raises(ConfigError, match="neftune_noise_alpha"):
        SFTConfig(neftune_noise_alpha=-1.0)


def test_probe_samples_zero_skips_the_probe_not_the_validation(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`probe_samples: 0` (the demo): no loss passes over training dialogues before and after training, the
    validation loss is still scored; with the default both are (the end-to-end test above)."""
    data = _write(tmp_path / "train.jsonl", _dialogues(12))
    cfg = SFTConfig(data=[data], max_length=96, max_steps=2, batch_size=4, learning_rate=1e-2, lora_r=4,
                    val_fraction=0.2, qa_samples=0, early_stopping_patience=0, probe_samples=0)
    out = StageDir(tmp_path / "sft")
    s = run_stage(out, cfg, lambda: sft(cfg, tiny_model_dir, out))
    assert s["train_loss_before"] is None and s["train_loss_after"] is None
    assert s["val_loss_before"] is not None and s["val_loss_after"] is not None
    logged = out.metrics().read()
    assert not any("probe_loss" in m for m in logged) and any("eval_loss" in m for m in logged)
    with pytest.raises(ConfigError, match="probe_samples"):
        SFTConfig(probe_samples=-1)


def test_full_fine_tuning_moves_every_weight_kind(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    data = _write(tmp_path / "train.jsonl", _dialogues(12))
    cfg = SFTConfig(data=[data], method="full", max_length=96, max_steps=2, batch_size=4, learning_rate=1e-3,
                    val_fraction=0.2, qa_samples=0, early_stopping_patience=0, eval_steps=2)
    out = StageDir(tmp_path / "sft")
    s = run_stage(out, cfg, lambda: sft(cfg, tiny_model_dir, out))
    assert s["adapter"] is None and not (out.path / "adapter").exists()
    assert s["trainable"]["trainable"] == s["trainable"]["total"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(str(out.path / "model")).state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert not base[name].equal(tuned[name]), name


def test_time_budget_stops_training() -> None:
    from types import SimpleNamespace

    from qihuang.finetune.callbacks import TimeBudget

    budget = TimeBudget(minutes=0.5)
    budget.t0 -= 31
    control = SimpleNamespace(should_training_stop=False, should_save=False, should_evaluate=False)
    state = SimpleNamespace(global_step=5, max_steps=100)
    budget.on_step_end(SimpleNamespace(eval_strategy="steps"), state, control)
    assert control.should_training_stop and control.should_save and control.should_evaluate
    relaxed = SimpleNamespace(should_training_stop=False, should_save=False, should_evaluate=False)
    TimeBudget(minutes=None).on_step_end(SimpleNamespace(eval_strategy="no"), state, relaxed)
    assert not relaxed.should_training_stop


def test_time_budget_fits_the_lr_schedule_to_the_steps_it_allows() -> None:
    """A 1-minute budget at 5 s a step allows 12 steps of a nominal 100: the LR anneals to its floor by step 12
    (the trainer's own cosine would still be at 99% of its peak there)."""
    import time
    from types import SimpleNamespace

    import torch
    from transformers import get_cosine_schedule_with_warmup

    from qihuang.finetune.callbacks import TimeBudget
    from qihuang.training.schedule import lr_at

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=100)
    budget = TimeBudget(minutes=1.0, fit_schedule=True, warmup=0.05)
    args = SimpleNamespace(eval_strategy="no")
    control = SimpleNamespace(should_training_stop=False, should_save=False, should_evaluate=False)
    budget.on_train_begin(args, SimpleNamespace(max_steps=100), control, lr_scheduler=sched)
    assert budget.schedule_steps == 100 and opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 5)
    for step in (1, 2, 3):
        opt.step()
        sched.step()
        if step == 3:  # three steps done in 12 s; the last two took 10 s
            budget.t0, budget.t1 = time.time() - 12, time.time() - 10
        budget.on_step_end(args, SimpleNamespace(global_step=step, max_steps=100), control, lr_scheduler=sched)
    assert budget.schedule_steps == 3 + int(48 / 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_at(3, 1.0, 1, 12, 0.1))
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # the floor, held after the fitted end
    assert not control.should_training_stop


def test_lora_on_extended_vocabulary_trains_new_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    """After `tokenizer extend` the new rows are peft trainable tokens: training runs and moves exactly them."""
    import torch
    from transformers import AutoModelForCausalLM

    from qihuang.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tok.add_tokens(["阴", "阳", "桂"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    ext = tmp_path / "extended"
    model.save_pretrained(ext)
    tok.save_pretrained(ext)
    data = _write(tmp_path / "train.jsonl", _dialogues(12))
    cfg = SFTConfig(data=[data], max_length=96, max_steps=3, eval_steps=3, batch_size=4, learning_rate=5e-2,
                    lora_r=4, qa_samples=0, val_fraction=0.0, early_stopping_patience=0)
    out = StageDir(tmp_path / "sft")
    run_stage(out, cfg, lambda: sft(cfg, ext, out))
    before = AutoModelForCausalLM.from_pretrained(str(ext)).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(str(out.path / "model")).get_input_embeddings().weight
    moved = (before - after).abs().sum(dim=1) > 0
    new = torch.zeros_like(moved)
    new[len(tok) - 3:] = True
    assert moved[new].all() and not moved[~new].any()


def test_scored_loss_equals_the_models_own(tiny_model_dir: Path) -> None:
    import torch

    from qihuang.models import load_model
    from qihuang.finetune.data import PackedCollator
    from qihuang.finetune.loss import scored_loss

    model, _ = load_model(str(tiny_model_dir))
    model.config.use_cache = False  # as in training: a cache would disable the packed (block-diagonal) mask
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (2, 40), generator=g).tolist()
    labels = [[-100] * 25 + row[25:] for row in ids]  # the prompt unscored, the answer scored
    packed = PackedCollator(0)([{"input_ids": ids[0], "labels": labels[0], "seq_lengths": [15, 25]},
                                {"input_ids": ids[1][:30], "labels": labels[1][:30], "seq_lengths": [30]}])
    plain = PackedCollator(0)([{"input_ids": ids[0], "labels": labels[0]}, {"input_ids": ids[1][:30],
                                                                            "labels": labels[1][:30]}])
    for batch in (packed, plain):
        with torch.no_grad():
            ours = scored_loss(model, batch)
            theirs = model(**batch).loss
            n = int((batch["labels"][:, 1:] != -100).sum())
            assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
            assert torch.allclose(scored_loss(model, batch, num_items_in_batch=2 * n), theirs / 2, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", LAUNCH_PRESETS)
def test_sft_ddp_two_processes_match_single(tmp_path: Path, tiny_model_dir: Path, preset: str) -> None:
    """`accelerate launch` with 2 CPU processes (gloo), 1 dialogue row per process and 2 accumulation steps, against
    one process with 4 rows a step: the same global batch holds the same packed rows at every step (accelerate hands
    the per-process batches of one seeded order out in turn), so the per-step losses and the saved weights agree up
    to float32 rounding (measured: rel 1e-7 loss, 3e-8 weights); only the main process logs and writes."""
    from tests.finetune.helpers import (
        SHARDING, accelerate_launch, assert_loads, assert_same_losses, assert_same_weights, cpu_config, flags,
        step_losses,
    )

    data = _write(tmp_path / "train.jsonl", _dialogues(40))
    common = dict(max_length=96, max_steps=6, learning_rate=1e-2, lora_r=8, lora_dropout=0.0, val_fraction=0.1,
                  qa_samples=2, qa_max_new_tokens=8, early_stopping_patience=0, eval_steps=5, device="cpu")
    single = StageDir(tmp_path / "single")
    cfg = SFTConfig(data=[data], batch_size=4, **common)  # type: ignore[arg-type]
    s = run_stage(single, cfg, lambda: sft(cfg, tiny_model_dir, single))
    ddp = tmp_path / "ddp"
    args = ["sft", "--model", str(tiny_model_dir), "--out", str(ddp), "--data", str(data),
            *flags({**common, "batch_size": 1, "grad_accum": 2})]
    run = accelerate_launch(cpu_config(tmp_path / "launch.yaml", 2, base=preset), args)
    assert run.returncode == 0, run.stderr[-3000:]
    d = json.loads((ddp / "summary.json").read_text())
    assert (d["processes"], d["global_batch"], s["processes"], s["global_batch"]) == (2, 4, 1, 4)
    assert (d["sharding"], s["sharding"]) == (SHARDING[preset], "none")
    assert d["steps"] == s["steps"] == 6 and d["tokens_seen"] == s["tokens_seen"]
    assert d["qa_samples"] == s["qa_samples"] == 2  # answered after training too (under ZeRO-3 by every process)
    assert_same_losses(step_losses(single.path), step_losses(ddp), rel=1e-5)
    assert_same_weights(single.path / "model", ddp / "model")
    assert (ddp / "done").exists() and (ddp / "adapter" / "adapter_config.json").exists()
    assert_loads(ddp / "model")
