"""Supervised fine-tuning (#6): LoRA or full, the base's chat template, loss on assistant tokens only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError, check_ranges
from qihuang.finetune.data import (
    Example, LoadReport, PackedCollator, curriculum, label_tokens, load_examples, mix, split_validation, to_dataset,
)
from qihuang.finetune.loss import plain_loss_trainer
from qihuang.finetune.outputs import load_start_model, save_trained
from qihuang.finetune.settings import FinetuneSettings
from qihuang.placement import Placement
from qihuang.placement import resolve as resolve_placement
from qihuang.runs import StageDir, is_main_process, run_stage, write_json, write_jsonl
from qihuang.template import Message, prompt_and_answer
from qihuang.textmetrics import rouge_l


def answer_questions(model: Any, tokenizer: Any, prompts: list[list[Message]], max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to chat prompts built with the shared template, through the one decoding path of chat, serve
    and eval (`decoding.generate_batch`: repetition control, continuous batching, on the model's device)."""
    from qihuang.decoding import generate_batch
    from qihuang.template import render_prompt

    was_training = model.training
    model.eval()
    try:
        return generate_batch(model, tokenizer, [render_prompt(tokenizer, p) for p in prompts], max_new_tokens,
                              batch_size=batch_size)
    finally:
        model.train(was_training)


@dataclass
class SFTConfig(FinetuneSettings):
    """SFT data, method and budget (the settings it shares with DPO: `FinetuneSettings`)."""

    stage: ClassVar[str] = "sft"

    data: list[Path] = field(default_factory=list)
    """Training files (qihuang dialogues, Alpaca, ShareGPT or OpenAI messages JSON/JSONL)."""
    data_ratios: list[float] = field(default_factory=list)
    """Mixing weight per data file (same order as data); empty: every file as is (equal shares with max_samples)."""
    max_samples: int | None = None
    """Total training dialogues after mixing (default: the sum of all files)."""
    eval_data: Path | None = None
    """Held-out QA/dialogue file for validation loss and ROUGE-L (default: a split of the training data)."""
    val_fraction: float = 0.05
    """Fraction of the training dialogues held out for validation when eval_data is not given."""
    max_val: int = 64
    """At most this many validation dialogues."""
    system_prompt: str | None = None
    """System prompt put first in dialogues that have none (default: the template's own behaviour)."""
    last_turn_only: bool = False
    """Loss on the last assistant turn only (default: every assistant turn)."""
    max_length: int = 512
    """Max tokens per dialogue; longer ones lose whole turns from the end, or are rejected if the first answer
    does not fit."""
    packing: bool = True
    """Pack several dialogues per sequence (position ids restart per dialogue, no attention across them)."""
    lora_layers: int = 0
    """LoRA only in the top N transformer layers (0 = every layer). Backpropagation then stops at the lowest
    adapted layer, so a step costs about (1 + 2N/L)/3 of a full one (L layers): the CPU lever of short SFT budgets.
    Needs train_new_tokens off (their embedding rows sit below every layer)."""
    train_new_tokens: bool = True
    """With LoRA, train the embedding rows of tokens added to the vocabulary (#4)."""
    curriculum_stages: int = 0
    """Order training easy → hard in this many stages by meta.difficulty (0/1: shuffled, no curriculum)."""
    warmup: float = 0.05
    """Warm-up: a fraction of the steps if < 1, else a number of steps."""
    eval_steps: int = 50
    """Validate (and checkpoint) every this many steps."""
    early_stopping_patience: int = 3
    """Stop after this many validations without improvement (0: off); the best checkpoint is kept."""
    probe_samples: int = 64
    """Training dialogues whose loss is scored before and after training (`train_loss_before`/`_after` in the
    summary: did it fit what it saw?): as many as the validation set (at least 8), capped at this; 0 skips both passes
    (the demo: 16 s of its SFT stage, the logged training loss shows the same)."""
    qa_samples: int = 16
    """Held-out questions answered before/after training for ROUGE-L (0: skip)."""
    qa_max_new_tokens: int = 64
    """Tokens generated per ROUGE-L answer."""
    neftune_noise_alpha: float | None = None
    """NEFTune: uniform noise of magnitude alpha / sqrt(tokens x width) added to the input embeddings while training
    (transformers' `TrainingArguments` field of the same name; None: off). At the demo's size alpha 5 changed 1 of 150
    held-out answers (RESULTS session 20)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_ratios and len(self.data_ratios) != len(self.data):
            raise ConfigError(f"data_ratios: {len(self.data_ratios)} ratios for {len(self.data)} data files")
        if any(r < 0 for r in self.data_ratios) or (self.data_ratios and sum(self.data_ratios) <= 0):
            raise ConfigError("data_ratios: must be non-negative with a positive sum")
        check_ranges("sft", self, val_fraction=(0, 0.5, False, True), max_length=(16, None, False),
                     lora_layers=(0, None, False), eval_steps=(0, None, True), warmup=(0, 1, False),
                     max_val=(0, None, False), max_samples=(1, None, False), curriculum_stages=(0, None, False),
                     early_stopping_patience=(0, None, False), qa_samples=(0, None, False),
                     probe_samples=(0, None, False), qa_max_new_tokens=(1, None, False),
                     neftune_noise_alpha=(0, None, True))
        if self.lora_layers and self.train_new_tokens and self.method == "lora":
            raise ConfigError("lora_layers needs train_new_tokens: false (new embedding rows would need the full "
                              "backward pass that lora_layers saves)")
        if self.early_stopping_patience > 0 and self.val_fraction == 0 and self.eval_data is None:
            raise ConfigError("early_stopping_patience needs validation data: set val_fraction > 0 or eval_data")


def _source_limits(cfg: SFTConfig) -> list[int | None]:
    """Dialogues to encode per file: all of them, or (with max_samples) just enough for the file's share of the
    mix plus a held-out margin, so a small run over a big file stays cheap."""
    if cfg.max_samples is None:
        return [None] * len(cfg.data)
    ratios = cfg.data_ratios or [1.0] * len(cfg.data)
    total = cfg.max_samples + (0 if cfg.eval_data else min(cfg.max_val, round(cfg.max_samples * cfg.val_fraction)))
    return [max(1, round(total * r / sum(ratios)) + 1) if r > 0 else 0 for r in ratios]


def build_data(cfg: SFTConfig, tokenizer: Any, out_dir: Path) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train, validation, data summary); rejects listed in out_dir/rejects.jsonl."""
    if not cfg.data:
        raise ConfigError("data: no training files given")
    report = LoadReport()
    sources = []
    missing = [str(p) for p in cfg.data if not Path(p).exists()]
    if missing:
        raise ConfigError(f"data: {missing} do not exist")
    limits = _source_limits(cfg)
    for path, limit in zip(cfg.data, limits):
        sources.append(load_examples(path, tokenizer, cfg.max_length, cfg.last_turn_only, cfg.system_prompt, report,
                                     limit=limit, seed=cfg.seed))
    train = mix(sources, cfg.data_ratios or None, cfg.max_samples, cfg.seed)
    if cfg.eval_data is not None:
        val = load_examples(cfg.eval_data, tokenizer, cfg.max_length, cfg.last_turn_only, cfg.system_prompt, report,
                            limit=cfg.max_val, seed=cfg.seed)
    else:
        train, val = split_validation(train, cfg.val_fraction, cfg.seed)
        val = val[: cfg.max_val]
    train = curriculum(train, cfg.curriculum_stages, cfg.seed)
    if not train:
        raise ConfigError(f"data: no usable training dialogue (rejected: {dict(report.reasons)})")
    if is_main_process():
        write_jsonl(out_dir / "rejects.jsonl", report.rejects)
    scored = sum(e.difficulty is not None for e in train)
    summary = {**report.summary(), "train_dialogues": len(train), "val_dialogues": len(val),
               "train_tokens": sum(len(e.input_ids) for e in train), "train_label_tokens": label_tokens(train),
               "curriculum": {"stages": cfg.curriculum_stages, "scored": scored} if cfg.curriculum_stages > 1 else None}
    return train, val, summary


def _layer_linears(model: Any) -> list[str]:
    """Leaf names of the linear modules inside the transformer layers (what "all-linear" means there)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}"})


def _lora_config(cfg: SFTConfig, tokenizer: Any, model: Any) -> Any:
    from peft import LoraConfig

    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    targets: Any = "all-linear" if cfg.lora_targets == ["all-linear"] else list(cfg.lora_targets)
    if 0 < cfg.lora_layers < n_layers and targets == "all-linear":
        targets = _layer_linears(model)
    new_ids = sorted(i for i, t in tokenizer.added_tokens_decoder.items() if not t.special)
    kwargs: dict[str, Any] = {}
    if cfg.train_new_tokens and new_ids:
        kwargs["trainable_token_indices"] = new_ids
    if 0 < cfg.lora_layers < n_layers:
        kwargs.update(layers_to_transform=list(range(n_layers - cfg.lora_layers, n_layers)), layers_pattern="layers")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", **kwargs)


def build_trainer(cfg: SFTConfig, model: Any, tokenizer: Any, train_ds: Any, val_ds: Any, ckpt_dir: Path,
                  callbacks: list[Any], placement: Placement | None = None) -> Any:
    """A trl SFTTrainer for pre-tokenised (and possibly pre-packed) data on `placement`'s device and precision
    (default: the CPU in fp32; no activation checkpointing), with `PackedCollator` batches (its `tokens` counts
    real tokens; the trainer is returned with it attached)."""
    from qihuang.finetune.distributed import shard_on_cpu
    from qihuang.progress import enabled as progress_enabled
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    use_val = val_ds is not None
    args = TrlSFTConfig(
        output_dir=str(ckpt_dir), **(placement or Placement("cpu", "fp32")).trainer_args(),
        gradient_checkpointing=False,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, lr_scheduler_type="cosine",
        logging_steps=max(1, min(10, cfg.eval_steps // 5)), eval_strategy="steps" if use_val else "no",
        eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.eval_steps, save_total_limit=2,
        load_best_model_at_end=use_val, metric_for_best_model="eval_loss", greater_is_better=False,
        seed=cfg.seed, data_seed=cfg.seed, report_to=[], dataloader_num_workers=0,
        packing=False, padding_free=False, max_length=None, shuffle_dataset=False,
        train_sampling_strategy="sequential" if cfg.curriculum_stages > 1 else "random",
        disable_tqdm=not progress_enabled(), remove_unused_columns=True,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        prediction_loss_only=True,  # validation needs the loss only: no [rows x tokens x vocabulary] logits kept
    )
    model.config.use_cache = False  # a cache disables the packed-sequence (block-diagonal) attention mask
    peft_config = _lora_config(cfg, tokenizer, model) if cfg.method == "lora" else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PackedCollator(pad)
    # the model's own loss: trl's fused LM-head loss misses peft's trainable-token rows, and its per-step entropy
    # and token-accuracy logging over the full logits doubles a CPU step (7.5 s → 15 s for 4 x 384 tokens, 135M)
    trainer_cls = plain_loss_trainer(SFTTrainer)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.qihuang_collator = collator
    shard_on_cpu(trainer)
    return trainer


def _qa_pairs(cfg: SFTConfig, val: list[Example]) -> list[tuple[list[dict[str, str]], str]]:
    pairs = [prompt_and_answer(e.messages) for e in val[: cfg.qa_samples]]
    return [(p, a) for p, a in pairs if a.strip()]


def _rouge(model: Any, tokenizer: Any, pairs: list[tuple[list[dict[str, str]], str]], max_new: int) -> float | None:
    if not pairs:
        return None
    answers = answer_questions(model, tokenizer, [p for p, _ in pairs], max_new)
    return round(sum(rouge_l(a, ref) for a, (_, ref) in zip(answers, pairs)) / len(pairs), 4)


def _probe_losses(trainer: Any, probe_ds: Any, use_val: bool) -> dict[str, float | None]:
    """Validation loss (None without validation data; the trainer's own when it evaluated at this very step) and the
    loss on a probe of training dialogues (None without a probe)."""
    from qihuang.finetune.distributed import evaluable

    with evaluable(trainer):
        val = (_logged_eval_loss(trainer) or trainer.evaluate()["eval_loss"]) if use_val else None
        probe = trainer.evaluate(probe_ds, metric_key_prefix="probe")["probe_loss"] if probe_ds is not None else None
        return {"val_loss": val, "train_loss": probe}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _logged_eval_loss(trainer: Any) -> float | None:
    """The validation loss the trainer logged at its current step (the last step's evaluation), else None."""
    state = trainer.state
    last = next((r for r in reversed(state.log_history) if "eval_loss" in r), None)
    if last is None or state.global_step == 0 or last.get("step") != state.global_step:
        return None
    return float(last["eval_loss"])


def _train(trainer: Any, cfg: SFTConfig, ckpt_dir: Path, use_val: bool) -> tuple[Any, str | None, int]:
    """(train result, checkpoint resumed from, real tokens trained on by all processes): resumed from the last
    checkpoint that the main process sees, early stopping only around training (not the before/after probes), and
    under `accelerate launch` the model wrapped for DDP after the evaluations before training."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint

    from qihuang.finetune.distributed import from_main, total, wrap_after_evaluate

    last = from_main(get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None)
    wrap_after_evaluate(trainer)
    if use_val and cfg.early_stopping_patience > 0:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer.qihuang_collator.batch_tokens = []
    first_step = trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=last)
    steps_run = trainer.state.global_step - (int(last.rsplit("-", 1)[1]) if last else first_step)
    tokens = total(trainer.qihuang_collator.trained_tokens(steps_run * cfg.grad_accum))
    trainer.remove_callback(EarlyStoppingCallback)
    return result, last, tokens


def sft(cfg: SFTConfig, model_dir: Path, out: StageDir) -> dict[str, Any]:
    """Write out.path/'model' (merged) and out.path/'adapter'."""
    import torch
    from transformers import set_seed

    from qihuang import chat_templates
    from qihuang.finetune.callbacks import LogToMetrics, TimeBudget, plot_losses, trainable_summary
    from qihuang.finetune.distributed import every_process_forwards, sharding, warn_mode

    set_seed(cfg.seed)
    out.path.mkdir(parents=True, exist_ok=True)
    placement = resolve_placement(cfg.device, cfg.precision, "sft")
    model, tokenizer, start = load_start_model(Path(model_dir), placement.load_dtype(cfg.method))
    chat_templates.apply(tokenizer, cfg.chat_template)
    train, val, data_summary = build_data(cfg, tokenizer, out.path)
    train_ds = to_dataset(train, cfg.packing, cfg.max_length, cfg.curriculum_stages)
    val_ds = to_dataset(val, cfg.packing, cfg.max_length, 0) if val else None
    probe = train[: min(max(len(val), 8), cfg.probe_samples)]
    probe_ds = to_dataset(probe, cfg.packing, cfg.max_length, 0) if probe else None
    ckpt_dir = out.path / "checkpoints"
    use_val = val_ds is not None
    callbacks: list[Any] = [LogToMetrics(out.metrics()), TimeBudget(cfg.max_minutes, cfg.fit_schedule, cfg.warmup)]
    trainer = build_trainer(cfg, model, tokenizer, train_ds, val_ds, ckpt_dir, callbacks, placement)
    warn_mode(trainer, out.metrics())
    qa_pairs = _qa_pairs(cfg, val) if cfg.qa_samples and every_process_forwards() else []
    base_model = trainer.model
    rouge_before = _rouge(base_model, tokenizer, qa_pairs, cfg.qa_max_new_tokens) if qa_pairs else None
    before = _probe_losses(trainer, probe_ds, use_val)
    result, last, tokens = _train(trainer, cfg, ckpt_dir, use_val)
    after = _probe_losses(trainer, probe_ds, use_val)
    rouge_after = _rouge(trainer.model, tokenizer, qa_pairs, cfg.qa_max_new_tokens) if qa_pairs else None
    state = trainer.state
    runtime = float(result.metrics.get("train_runtime", 0.0)) or 1e-9
    trainable = trainable_summary(trainer.model)
    saved = save_trained(trainer, tokenizer, out.path, stage="sft", base=start, method=cfg.method,
                         data=[str(p) for p in cfg.data], system_prompt=cfg.system_prompt)
    if trainer.is_world_process_zero():
        plot_losses(state.log_history, out.path / "loss.png", "SFT")
    summary = {
        "start": start, "method": cfg.method, "data": data_summary, **saved,
        "train_loss_before": _rounded(before["train_loss"]), "train_loss_after": _rounded(after["train_loss"]),
        "val_loss_before": _rounded(before["val_loss"]), "val_loss_after": _rounded(after["val_loss"]),
        "qa_rouge_l_before": rouge_before, "qa_rouge_l_after": rouge_after, "qa_samples": len(qa_pairs),
        "steps": state.global_step, "best_checkpoint": state.best_model_checkpoint,
        "best_val_loss": state.best_metric, "resumed_from": last,
        "stopped_early": state.global_step < state.max_steps, "train_seconds": round(runtime, 1),
        "tokens_seen": tokens, "tokens_per_s": round(tokens / runtime, 1), "packing": cfg.packing,
        "trainable": trainable, "threads": torch.get_num_threads(), "device": placement.device,
        "precision": placement.precision, "processes": trainer.accelerator.num_processes,
        "sharding": sharding(trainer),
        "global_batch": cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes,
    }
    if is_main_process():
        out.metrics().log(event="summary", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
        write_json(out.path / "sft_summary.json", summary)
    return summary


@click.command("sft")
@click.option("--model", "model_dir", required=True, help="Start model: HF directory, preset name or adapter dir.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Stage output folder.")
@click.option("--force", is_flag=True, help="Rerun even if the stage is marked done.")
@config_options(SFTConfig)
def sft_cli(model_dir: str, out_dir: Path, force: bool, cfg: SFTConfig) -> None:
    """Supervised fine-tuning."""
    from qihuang.models import prepare_model

    path = Path(model_dir) if Path(model_dir).is_dir() else prepare_model(model_dir)
    summary = run_stage(StageDir(out_dir), cfg, lambda: sft(cfg, path, StageDir(out_dir)), force=force)
    click.echo(f"sft: val loss {summary.get('val_loss_before')} → {summary.get('val_loss_after')}, "
               f"ROUGE-L {summary.get('qa_rouge_l_before')} → {summary.get('qa_rouge_l_after')}; "
               f"model {out_dir}/model")
