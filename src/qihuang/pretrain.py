"""Continual pretraining (#4) on passages mixed with general text: full fine-tuning or LoRA (+ trainable new-token
embeddings), packed sequences, exact resume, spike guard, held-out bits/char before and after."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from qihuang.cliutil import config_options, model_passages_options, run_stage_command
from qihuang.config import ConfigError, check_ranges
from qihuang.placement import Device, Precision, sharding_not_run
from qihuang.placement import resolve as resolve_placement
from qihuang.runs import StageDir
from qihuang.training.settings import LoopSettings

if TYPE_CHECKING:
    from collections.abc import Callable

EXTENSION_FILE = "qihuang_extension.json"
DEFAULT_GENERAL = "general_sft/alpaca_zh_47k.json"


@dataclass
class PretrainConfig(LoopSettings):
    """Continual pretraining budget and hyper-parameters (the training loop's own settings are inherited from
    `LoopSettings`, and the config itself is what `train_loop` receives)."""

    max_minutes: float | None = None
    """Wall-time budget of the whole stage, evaluations included (training stops early to fit it)."""
    mode: Literal["full", "lora", "embeddings"] = "full"
    """full fine-tuning, LoRA adapters (merged into the saved model), or embeddings: only the token embeddings and
    LM head learn (the body is frozen; backward still runs through it, but computes no weight gradients: ~1.2×
    the tokens/s of full on 2 CPU cores) — the first stage of vocabulary adaptation (Chinese-LLaMA, Ziya)."""
    freeze_layers: int = 0
    """full mode: freeze the bottom N decoder layers (no backward through them; embeddings then learn from the
    output side only, through tied weights)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_embeddings: Literal["new", "all", "none"] = "new"
    """LoRA mode: train the rows of tokens added by `tokenizer extend` (new), whole embeddings/LM head (all), none."""
    general_ratio: float = 0.1
    """Fraction of training characters taken from general text (keeps general ability)."""
    general_file: Path | None = None
    """General text (Alpaca JSON/JSONL, ShareGPT JSONL); default: general_sft/alpaca_zh_47k.json of the data root."""
    max_train_chars: int | None = 3_000_000
    """Use at most this many characters of passages (sampled with the seed); none: all."""
    eval_chars: int = 5000
    """Characters of held-out text scored for bits/char."""
    eval_seq_len: int = 512
    """Window (tokens) of the bits/char evaluation."""
    eval_base: bool = True
    """Also score the model before vocabulary extension (bpc_base), when the input records one."""
    grad_checkpoint: float = 0.0
    """Fraction of decoder layers (from the bottom) recomputed in backward to save memory (0: none, 1: all)."""
    device: Device = "auto"
    """Where to train: auto (CUDA when a GPU is visible, else the CPU), cpu or cuda (`qihuang.placement`, as SFT
    and DPO)."""
    precision: Precision = "auto"
    """Mixed precision: auto (bf16 autocast on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16, fp16."""
    threads: int = 0
    """CPU threads for torch (0: leave as set)."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""

    def __post_init__(self) -> None:
        LoopSettings.__post_init__(self)
        check_ranges("pretrain", self, max_minutes=(0, None, True), general_ratio=(0, 1, False, True),
                     lora_r=(1, None, False), freeze_layers=(0, None, False), grad_checkpoint=(0, 1, False),
                     eval_chars=(0, None, False), eval_seq_len=(8, None, False), threads=(0, None, False),
                     lora_alpha=(0, None, True), lora_dropout=(0, 0.999, False), max_train_chars=(1, None, False))
        if self.mode != "full" and self.freeze_layers:
            raise ConfigError("pretrain.freeze_layers applies to mode=full only")
        if self.mode == "embeddings" and self.embed_lr_mult == 0:
            raise ConfigError("pretrain.embed_lr_mult=0 freezes the embeddings, the only thing mode=embeddings trains")


def _heldout_texts(heldout: Path, max_chars: int) -> list[str]:
    """Held-out passages interleaved across books (round robin), cut at max_chars characters."""
    from qihuang.runs import read_jsonl
    from qihuang.training.bpc import take_chars

    by_book: dict[str, list[str]] = {}
    for rec in read_jsonl(heldout):
        if rec.get("text"):
            by_book.setdefault(str(rec.get("book", "")), []).append(str(rec["text"]))
    order: list[str] = []
    queues = [list(v) for v in by_book.values()]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return take_chars(order, max_chars)


def set_grad_checkpoint(model: Any, fraction: float) -> None:
    """Recompute the bottom `fraction` of decoder layers in backward (HF per-layer checkpointing)."""
    if fraction <= 0:
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    layers = model.get_decoder().layers
    keep = round(len(layers) * min(fraction, 1.0))
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < keep


def prepare_for_training(cfg: PretrainConfig, model: Any, extension: dict[str, Any]) -> Any:
    """Apply the training mode: checkpointing, frozen layers, or peft LoRA."""
    set_grad_checkpoint(model, cfg.grad_checkpoint)
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        kw: dict[str, Any] = {}
        new_ids = list(range(*extension["added_range"])) if extension.get("added_range") else []
        if cfg.lora_embeddings == "new" and new_ids:
            kw["trainable_token_indices"] = {"embed_tokens": new_ids}
        elif cfg.lora_embeddings == "all":
            kw["modules_to_save"] = ["embed_tokens", "lm_head"]
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM", **kw)
        model = get_peft_model(model, lcfg)
        if cfg.grad_checkpoint > 0:
            model.enable_input_require_grads()
        return model
    if cfg.mode == "embeddings":
        from qihuang.training.loop import embedding_params

        keep = embedding_params(model)
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        return model
    if cfg.embed_lr_mult == 0:
        freeze_embeddings(model)
    if cfg.freeze_layers:
        layers = model.get_decoder().layers
        if cfg.freeze_layers >= len(layers):
            raise ConfigError(f"pretrain.freeze_layers={cfg.freeze_layers} but the model has {len(layers)} layers")
        for layer in layers[:cfg.freeze_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)
        # no backward below the first trained layer: the input embeddings' output is detached
        model._qihuang_detach = model.get_input_embeddings().register_forward_hook(lambda _m, _i, o: o.detach())
    return model


def freeze_embeddings(model: Any) -> None:
    """No gradient for the token embeddings and LM head (one tensor when tied): what embed_lr_mult=0 asks for,
    without the gradients and AdamW moments an LR of 0 would still keep."""
    from qihuang.training.loop import embedding_params

    keep = embedding_params(model)
    for p in model.parameters():
        if id(p) in keep:
            p.requires_grad_(False)


def _load_extension(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / EXTENSION_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def _training_data(cfg: PretrainConfig, tok: Any, train: Path, metrics: Any) -> tuple[Any, dict[str, int]]:
    """The packed training blocks (passages mixed with general text) and the characters of each kind;
    deterministic from the seed: identical on every rank and every rerun."""
    from qihuang.config import data_file
    from qihuang.training.data import mix_documents, pack_documents, read_general, read_texts

    domain = read_texts(train)
    general: list[str] = []
    if cfg.general_ratio > 0:
        try:
            general_path = cfg.general_file or data_file(DEFAULT_GENERAL)
        except ConfigError as exc:  # only the default can be missing: an explicit general_file must exist
            general_path = None
            metrics.log(event="warning", message=f"no general-text mix: {exc}")
        general = read_general(general_path) if general_path else []
    docs, chars = mix_documents(domain, general, cfg.general_ratio, cfg.seed, cfg.max_train_chars)
    return pack_documents(tok, docs, cfg.seq_len, cfg.seed), chars


def _evaluator(cfg: PretrainConfig, tok: Any, eval_texts: list[str]) -> Callable[..., dict[str, Any]]:
    """evaluate(model, tokenizer=tok): held-out bits/char, tokens per character and seconds ({} without text)."""
    from qihuang.training.bpc import bits_per_char

    def evaluate(m: Any, t: Any = tok) -> dict[str, Any]:
        if not eval_texts:
            return {}
        r = bits_per_char(m, t, eval_texts, seq_len=cfg.eval_seq_len)
        return {"bpc": round(r["bpc"], 5), "eval_tokens_per_char": round(r["tokens_per_char"], 4),
                "eval_seconds": r["seconds"]}

    return evaluate


def _load_for_training(cfg: PretrainConfig, model_dir: Path, extension: dict[str, Any],
                       evaluate: Callable[..., dict[str, Any]], accelerator: Any, out: StageDir,
                       metrics: Any) -> tuple[Any, dict[str, Any]]:
    """The model in training mode (cfg.mode applied) and the held-out scores before training: {"before": ...,
    "base": ... (the model before vocabulary extension)}, computed by the main process and cached in
    bpc_before.json so that a resumed run does not pay them twice."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qihuang.runs import write_json
    from qihuang.training.zero import whole, zero_stage

    before_file = out.path / "bpc_before.json"
    before: dict[str, Any] = json.loads(before_file.read_text()) if before_file.exists() else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    sharded = zero_stage(accelerator) >= 3  # loaded sharded (zero.Init): a forward is a collective, all evaluate
    if not before and (accelerator.is_main_process or sharded):
        with whole(model, accelerator):
            before = {"before": evaluate(model)}
        base_dir = extension.get("base_model")
        if cfg.eval_base and base_dir and Path(base_dir, "config.json").exists():
            bm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            with whole(bm, accelerator):
                before["base"] = evaluate(bm, AutoTokenizer.from_pretrained(base_dir))
            del bm
        if accelerator.is_main_process:
            write_json(before_file, before)
            if before["before"]:
                metrics.log(step=0, **before["before"])
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        before = json.loads(before_file.read_text()) if before_file.exists() else {}
    model = prepare_for_training(cfg, model, extension)
    model.train()
    return model, before


def _train_seconds(cfg: PretrainConfig, before: dict[str, Any], stage_t0: float) -> float | None:
    """The training loop's share of max_minutes: what is left after the time spent so far (data, model load and,
    on a first run, the evaluations before training), the final evaluation and 10 s to save; None: no budget."""
    if cfg.max_minutes is None:
        return None
    final_eval = float(before.get("before", {}).get("eval_seconds", 0.0))
    spent = time.time() - stage_t0
    return max(cfg.max_minutes * 60 - spent - final_eval - 10.0, 0.0)


def _final_model(cfg: PretrainConfig, model: Any) -> Any:
    """The trained model for saving: LoRA merged, the frozen-layers hook removed, in eval mode."""
    final = model.merge_and_unload() if cfg.mode == "lora" else model
    if getattr(final, "_qihuang_detach", None) is not None:
        final._qihuang_detach.remove()
    final.eval()
    return final


def _from_gathered(model_dir: Path, weights: dict[str, Any]) -> Any:
    """The trained model rebuilt, unsharded (not through zero.Init), from the weights DeepSpeed ZeRO-3 or FSDP
    gathered (named as the loss wrapper names them: `model.` + the Hugging Face names), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from qihuang.training.zero import unsharded_loading

    with unsharded_loading():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    state = {k.removeprefix("model."): v.float() for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"pretrain: the gathered sharded weights do not fit {model_dir}: missing "
                           f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.eval()


def _save_model(model: Any, tok: Any, extension: dict[str, Any], target: Path) -> None:
    """Model, tokenizer and the vocabulary-extension record into `target`, atomically."""
    from qihuang.runs import atomic_path

    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if extension:
            (tmp / EXTENSION_FILE).write_text(json.dumps(extension, ensure_ascii=False, indent=1), "utf-8")


def _bpc_summary(before: dict[str, Any], after: dict[str, Any], eval_texts: list[str]) -> dict[str, Any]:
    """Held-out bits/char before and after training (and of the base model) for the stage summary."""
    summary: dict[str, Any] = {"bpc_before": before.get("before", {}).get("bpc"), "bpc_after": after.get("bpc")}
    if "base" in before:
        summary["bpc_base"] = before["base"].get("bpc")
        summary["tokens_per_char_base"] = before["base"].get("eval_tokens_per_char")
    ref = summary.get("bpc_base") or summary["bpc_before"]
    if ref and summary["bpc_after"]:
        summary["bpc_reduction_vs_base"] = round(1 - summary["bpc_after"] / ref, 4)
    summary["eval_chars"] = len("".join(eval_texts))
    return summary


def _accelerator(cfg: PretrainConfig) -> Any:
    """The stage's Accelerator on the device and precision `cfg` resolves to (`qihuang.placement`); LoRA with the
    parameters sharded (DeepSpeed ZeRO-3, FSDP) is refused here, before any work."""
    from accelerate.utils import DistributedType

    from qihuang.training.zero import make_accelerator, zero_stage

    placement = resolve_placement(cfg.device, cfg.precision, "pretrain")
    accelerator = make_accelerator(placement.device, placement.accelerate_mixed_precision)
    mode = ("DeepSpeed ZeRO-3" if zero_stage(accelerator) >= 3 else
            "FSDP" if accelerator.distributed_type == DistributedType.FSDP else None)
    if cfg.mode == "lora" and mode:
        raise ConfigError(f"pretrain: mode=lora under {mode} is not supported (the adapter is merged on unsharded "
                          "weights); launch LoRA pretraining with deepspeed_zero2.yaml or ddp.yaml")
    return accelerator


def pretrain(cfg: PretrainConfig, model_dir: Path, train: Path, heldout: Path, out: StageDir) -> dict[str, Any]:
    """Train on `train` passages (+ general mix), write the (merged) model into out.path/'model'."""
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer

    from qihuang.models import check_tokenizer_files
    from qihuang.training.loop import train_loop  # looked up at run time (benchmarks/grad_norm_tensors.py wraps it)
    from qihuang.training.metrics import plot_loss

    stage_t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = _accelerator(cfg)
    set_seed(cfg.seed)
    main = accelerator.is_main_process
    metrics = out.metrics()
    unsharded = sharding_not_run(accelerator.distributed_type.value, "pretrain")
    if unsharded and main:
        metrics.log(event="warning", message=unsharded)
    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(str(check_tokenizer_files(model_dir)))
    extension = _load_extension(model_dir)
    data, chars = _training_data(cfg, tok, train, metrics)
    eval_texts = _heldout_texts(heldout, cfg.eval_chars) if cfg.eval_chars else []
    evaluate = _evaluator(cfg, tok, eval_texts)
    model, before = _load_for_training(cfg, model_dir, extension, evaluate, accelerator, out, metrics)
    train_seconds = _train_seconds(cfg, before, stage_t0)
    result = train_loop(model, data, cfg, accelerator, out.path / "checkpoints", metrics, train_seconds,
                        evaluate if cfg.eval_every else None)
    gathered = result.pop("gathered_weights", None)  # ZeRO-3, FSDP: the sharded weights, whole, on the main process
    accelerator.free_memory()  # the prepared optimizer's moments: not needed to evaluate and save the model

    summary: dict[str, Any] = {**{k: v for k, v in result.items() if k != "evals"}, **chars,
                               "train_blocks": data.n_blocks, "mode": cfg.mode, "seq_len": cfg.seq_len,
                               "global_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
                               "processes": accelerator.num_processes, "device": str(accelerator.device),
                               "distributed_type": str(accelerator.distributed_type.value)}
    if main:
        final = _from_gathered(model_dir, gathered) if gathered is not None else _final_model(cfg, model)
        after = evaluate(final)
        _save_model(final, tok, extension, out.path / "model")
        summary.update(_bpc_summary(before, after, eval_texts))
        summary["evals"] = result["evals"]
        metrics.log(step=result["steps"], final=True, **after)
        plot_loss(metrics.read(), out.path / "loss.png")
    metrics.close()
    accelerator.wait_for_everyone()
    summary["stage_seconds"] = round(time.time() - stage_t0, 1)
    return summary


@click.command("pretrain")
@config_options(PretrainConfig)
@model_passages_options("Model to train: preset, HF directory (e.g. a tokenizer stage's model/) or .gguf",
                        "Training passages (JSONL with `text`)",
                        "Held-out passages for bits/char (JSONL with `text`, `book`)")
def pretrain_cli(cfg: PretrainConfig, model_spec: str, train_path: Path, heldout_path: Path, out_path: Path,
                 force: bool) -> None:
    """Continual pretraining (full or LoRA); rerunning a killed run resumes from its last checkpoint."""
    from qihuang.models import prepare_model

    model_dir = prepare_model(model_spec)
    run_stage_command(out_path, cfg, lambda out: pretrain(cfg, model_dir, train_path, heldout_path, out), force,
                      hide=("evals",))
