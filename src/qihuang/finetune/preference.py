"""Preference tuning (#6): DPO on comparison pairs with a reference model."""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError, check_ranges, data_file
from qihuang.finetune.data import read_records
from qihuang.finetune.settings import FinetuneSettings
from qihuang.placement import resolve as resolve_placement
from qihuang.runs import StageDir, is_main_process, run_stage, write_json, write_jsonl
from qihuang.template import (
    Message, TemplateError, chat_defaults, encode_prompt, encode_text, render, to_messages,
)

DEFAULT_PAIRS = "preference/dpo_zh_500.jsonl"


@dataclass
class DPOConfig(FinetuneSettings):
    """DPO data, method and budget (the settings it shares with SFT: `FinetuneSettings`)."""

    stage: ClassVar[str] = "dpo"

    enabled: bool = True
    """Run the DPO stage (false: pass the input model through unchanged)."""
    data: list[Path] = field(default_factory=list)
    """Preference files: `conversations` + `chosen` + `rejected` (answers as text or as LLaMA-Factory messages
    `{from, value}`), `prompt` + `chosen` + `rejected` (TRL), or MedicalGPT's `question` (+ `history`, `system`) +
    `response_chosen` + `response_rejected`; default the shared preference/dpo_zh_500.jsonl."""
    eval_data: Path | None = None
    """Held-out pairs for reward accuracy (default: a split of data)."""
    heldout_fraction: float = 0.1
    """Fraction of pairs held out when eval_data is not given."""
    max_pairs: int | None = None
    """Use at most this many training pairs."""
    eval_pairs: int = 32
    """At most this many held-out pairs scored before/after."""
    system_prompt: str | None = None
    """System prompt put first in prompts that have none (default: the one the SFT stage saved with its model)."""
    max_length: int = 512
    """Max tokens of prompt + answer; pairs whose prompt alone takes over half are rejected, longer answers are
    cut at the end (trl keep_start)."""
    beta: float = 0.1
    """DPO beta (strength of the pull toward the reference)."""
    loss_type: str = "sigmoid"
    """trl DPO loss type (sigmoid = the original DPO loss, ipo, hinge, ...)."""
    learning_rate: float = 5e-5
    """Peak learning rate (lower than SFT's: DPO moves a model that already answers)."""
    save_steps: int = 50
    """Checkpoint every this many steps (resume after a kill)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("dpo", self, beta=(0, None, True), heldout_fraction=(0, 0.5, False, True),
                     max_length=(32, None, False), save_steps=(1, None, False), eval_pairs=(0, None, False),
                     max_pairs=(1, None, False))


@dataclass
class Pair:
    """One checked preference pair."""

    prompt: list[Message]
    chosen: str
    rejected: str

    def row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def _answer(value: Any) -> str:
    """An answer given as text, as one message (LLaMA-Factory: `{"from": "gpt", "value": …}`) or as messages whose
    last one is the answer (OpenAI / TRL conversational)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
    if not isinstance(value, str):
        raise TemplateError("bad_answer", f"expected a string, got {type(value).__name__}")
    return value


def _medicalgpt_pair(record: dict[str, Any]) -> dict[str, Any]:
    """MedicalGPT's reward/DPO record (`system`, `history` [[q, a], …], `question`, `response_chosen`,
    `response_rejected`) in the `messages` + `chosen` + `rejected` shape."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for turn in record.get("history") or []:
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise TemplateError("bad_history", "history turns must be [question, answer] pairs")
        msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    msgs.append({"role": "user", "content": record.get("question")})
    return {"messages": msgs, "chosen": record["response_chosen"], "rejected": record["response_rejected"]}


def check_pair(record: dict[str, Any], tokenizer: Any, max_length: int, system: str | None = None) -> Pair:
    """A valid Pair, or TemplateError with the reason: chosen_equals_rejected, empty_answer, empty_content,
    roles_out_of_order, prompt_too_long, ..."""
    if "response_chosen" in record and "response_rejected" in record:
        record = _medicalgpt_pair(record)
    if "chosen" not in record or "rejected" not in record:
        raise TemplateError("no_chosen_rejected")
    chosen, rejected = _answer(record["chosen"]), _answer(record["rejected"])
    if not chosen.strip() or not rejected.strip():
        raise TemplateError("empty_answer")
    if chosen.strip() == rejected.strip():
        raise TemplateError("chosen_equals_rejected")
    src = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    if "prompt" in src and isinstance(src["prompt"], str):
        src = {"messages": [{"role": "user", "content": src.pop("prompt")}], **src}
    elif "prompt" in src:
        src = {"messages": src.pop("prompt"), **src}
    prompt = to_messages(src, system=system)
    body = prompt[1:] if prompt and prompt[0]["role"] == "system" else prompt
    if not body or body[-1]["role"] != "user":
        raise TemplateError("no_user_turn" if not body else "roles_out_of_order")
    for i, m in enumerate(body):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise TemplateError("roles_out_of_order")
        if not m["content"].strip():
            raise TemplateError("empty_content")
    if len(encode_prompt(tokenizer, prompt)) > max_length // 2:
        raise TemplateError("prompt_too_long", f"> {max_length // 2} tokens")
    return Pair(prompt, chosen, rejected)


def load_pairs(paths: list[Path], tokenizer: Any, max_length: int, system: str | None
               ) -> tuple[list[Pair], list[dict[str, Any]]]:
    """(pairs, rejects) from preference files; every dropped pair is listed with its reason."""
    pairs: list[Pair] = []
    rejects: list[dict[str, Any]] = []
    for path in paths:
        for index, rec, error in read_records(Path(path)):
            try:
                if rec is None:
                    raise TemplateError(error.split(":")[0], error)
                pairs.append(check_pair(rec, tokenizer, max_length, system))
            except TemplateError as exc:
                rejects.append({"source": str(path), "index": index, "reason": exc.reason, "detail": str(exc)})
    return pairs, rejects


def answer_logps(model: Any, tokenizer: Any, prompt: list[Message], answer: str, max_length: int) -> float:
    """Sum of log-probabilities of the answer's tokens (through the template's end-of-turn) after the prompt."""
    import torch

    head = encode_prompt(tokenizer, prompt)
    full = encode_text(tokenizer, render(tokenizer, [*prompt, {"role": "assistant", "content": answer}]))
    if full[: len(head)] != head:
        raise TemplateError("template_not_prefix_stable")
    full = full[:max_length]
    ids = torch.tensor([full], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logp[len(head) - 1:].sum())


def score_pairs(model: Any, tokenizer: Any, pairs: list[Pair], max_length: int) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) per pair."""
    was_training = model.training
    model.eval()
    out = [(answer_logps(model, tokenizer, p.prompt, p.chosen, max_length),
            answer_logps(model, tokenizer, p.prompt, p.rejected, max_length)) for p in pairs]
    model.train(was_training)
    return out


def preference_metrics(ref: list[tuple[float, float]], policy: list[tuple[float, float]], beta: float
                       ) -> dict[str, float]:
    """DPO implicit-reward accuracy and margin (policy vs reference), and the policy's own ranking accuracy."""
    n = max(1, len(policy))
    margins = [beta * ((pc - rc) - (pr - rr)) for (rc, rr), (pc, pr) in zip(ref, policy)]
    return {"reward_accuracy": round(sum(m > 0 for m in margins) / n, 4),
            "reward_margin": round(sum(margins) / n, 4),
            "logp_accuracy": round(sum(pc > pr for pc, pr in policy) / n, 4),
            "logp_margin": round(sum(pc - pr for pc, pr in policy) / n, 4)}


def _split_pairs(cfg: DPOConfig, tokenizer: Any, system: str | None, out: StageDir
                 ) -> tuple[list[Pair], list[Pair], list[dict[str, Any]], list[Path]]:
    """(training pairs, held-out pairs, rejects, data files): checked, shuffled with the seed, held out (eval_data or
    a split), rejects listed in out.path/rejects.jsonl; ConfigError when no pair is left to train on."""
    paths = list(cfg.data) or [data_file(DEFAULT_PAIRS)]
    pairs, rejects = load_pairs(paths, tokenizer, cfg.max_length, system)
    random.Random(cfg.seed).shuffle(pairs)
    if cfg.eval_data is not None:
        held, held_rejects = load_pairs([cfg.eval_data], tokenizer, cfg.max_length, system)
        rejects += held_rejects
    else:
        n_held = round(len(pairs) * cfg.heldout_fraction)
        held, pairs = pairs[:n_held], pairs[n_held:]
    train = pairs[: cfg.max_pairs] if cfg.max_pairs else pairs
    if is_main_process():
        write_jsonl(out.path / "rejects.jsonl", rejects)
    if not train:
        raise ConfigError(f"dpo data: no usable pair in {[str(p) for p in paths]} ({len(rejects)} rejected)")
    return train, held[: cfg.eval_pairs], rejects, paths


def _dpo_trainer(cfg: DPOConfig, model: Any, tokenizer: Any, train: list[Pair], out: StageDir, placement: Any
                 ) -> Any:
    """trl's DPOTrainer on `placement`: LoRA (reference = adapter off) or full (reference = a frozen copy of the
    start model, which may have been merged in memory); metrics and the time budget as callbacks."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    from qihuang.finetune.callbacks import LogToMetrics, TimeBudget
    from qihuang.finetune.distributed import shard_on_cpu
    from qihuang.progress import enabled as progress_enabled

    args = TrlDPOConfig(
        output_dir=str(out.path / "checkpoints"), **placement.trainer_args(), gradient_checkpointing=False,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, beta=cfg.beta,
        loss_type=[cfg.loss_type], max_length=cfg.max_length, truncation_mode="keep_start",
        logging_steps=max(1, min(10, cfg.save_steps // 5)), save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, seed=cfg.seed, report_to=[], disable_tqdm=not progress_enabled(),
        dataloader_num_workers=0, lr_scheduler_type="cosine", warmup_steps=0.05,
    )
    model.config.use_cache = False
    peft_config = None
    if cfg.method == "lora":
        targets: Any = "all-linear" if cfg.lora_targets == ["all-linear"] else list(cfg.lora_targets)
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=targets, task_type="CAUSAL_LM")
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.method == "full" else None
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                         train_dataset=Dataset.from_list([p.row() for p in train]),
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[LogToMetrics(out.metrics()), TimeBudget(cfg.max_minutes, cfg.fit_schedule, 0.05)])
    shard_on_cpu(trainer)
    return trainer


def _passthrough(model_dir: Path, out: StageDir) -> dict[str, Any]:
    """The disabled stage: the input model copied through unchanged (by the main process)."""
    from qihuang.finetune.outputs import copy_model

    if is_main_process():
        copy_model(Path(model_dir), out.path / "model")
        write_json(out.path / "lineage.json", {"stage": "dpo", "base": str(model_dir), "adapter": None,
                                               "model": "model", "method": "passthrough", "data": []})
    return {"enabled": False, "model": str(out.path / "model"), "passthrough_of": str(model_dir)}


def dpo(cfg: DPOConfig, model_dir: Path, out: StageDir) -> dict[str, Any]:
    """Write out.path/'model' (merged). Under `accelerate launch` every process trains (DDP) and the main one
    scores the held-out pairs and writes the outputs."""
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from qihuang import chat_templates
    from qihuang.finetune.callbacks import plot_losses, trainable_summary
    from qihuang.finetune.distributed import every_process_forwards, from_main, sharding, warn_mode
    from qihuang.finetune.outputs import load_start_model, save_trained

    out.path.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        return _passthrough(model_dir, out)
    set_seed(cfg.seed)
    placement = resolve_placement(cfg.device, cfg.precision, "dpo")
    model, tokenizer, start = load_start_model(Path(model_dir), placement.load_dtype(cfg.method))
    model = placement.place(model)
    chat_templates.apply(tokenizer, cfg.chat_template)
    system = cfg.system_prompt or chat_defaults(model_dir).get("system_prompt")
    train, held, rejects, paths = _split_pairs(cfg, tokenizer, system, out)
    scored = held if is_main_process() else []  # the held-out scores only go into the main process's summary
    ref_scores = score_pairs(model, tokenizer, scored, cfg.max_length) if scored else []
    trainer = _dpo_trainer(cfg, model, tokenizer, train, out, placement)
    warn_mode(trainer, out.metrics())
    ckpt_dir = out.path / "checkpoints"
    last = from_main(get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None)
    result = trainer.train(resume_from_checkpoint=last)
    policy_scores = (score_pairs(trainer.model, tokenizer, held, cfg.max_length)[: len(scored)]
                     if held and every_process_forwards() else [])  # kept by the main process only
    before = preference_metrics(ref_scores, ref_scores, cfg.beta)
    after = preference_metrics(ref_scores, policy_scores, cfg.beta)
    trainable = trainable_summary(trainer.model)
    saved = save_trained(trainer, tokenizer, out.path, stage="dpo", base=start, method=cfg.method,
                         data=[str(p) for p in paths], system_prompt=system)
    if trainer.is_world_process_zero():
        plot_losses(trainer.state.log_history, out.path / "loss.png", "DPO")
    summary = {
        "enabled": True, "start": start, "method": cfg.method, "data": [str(p) for p in paths], **saved,
        "train_pairs": len(train), "heldout_pairs": len(held), "rejected": dict(Counter(r["reason"] for r in rejects)),
        "n_rejected": len(rejects),
        **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()},
        "train_reward_accuracy_last": _last(trainer.state.log_history, "rewards/accuracies"),
        "steps": trainer.state.global_step, "train_seconds": round(result.metrics.get("train_runtime", 0.0), 1),
        "resumed_from": last, "beta": cfg.beta, "trainable": trainable, "device": placement.device,
        "precision": placement.precision, "processes": trainer.accelerator.num_processes,
        "sharding": sharding(trainer),
        "global_batch": cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes,
    }
    if is_main_process():
        out.metrics().log(event="summary", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    vals = [h[key] for h in history if key in h]
    return round(float(vals[-1]), 4) if vals else None


@click.command("dpo")
@click.option("--model", "model_dir", required=True, help="Start model: HF directory (the SFT output) or preset.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Stage output folder.")
@click.option("--force", is_flag=True, help="Rerun even if the stage is marked done.")
@config_options(DPOConfig)
def dpo_cli(model_dir: str, out_dir: Path, force: bool, cfg: DPOConfig) -> None:
    """Preference tuning (DPO)."""
    from qihuang.models import prepare_model

    path = Path(model_dir) if Path(model_dir).is_dir() else prepare_model(model_dir)
    s = run_stage(StageDir(out_dir), cfg, lambda: dpo(cfg, path, StageDir(out_dir)), force=force)
    click.echo(f"dpo: held-out reward accuracy {s.get('reward_accuracy_before')} → {s.get('reward_accuracy_after')}, "
               f"margin {s.get('reward_margin_after')}; model {out_dir}/model")
