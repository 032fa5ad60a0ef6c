"""The training loop: packed batches keyed by step, gradient accumulation (DDP-aware through accelerate), cosine
LR, clipping, spike guard with rollback, atomic checkpoints with exact resume, periodic evaluation, metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from qihuang.training.data import PackedData
from qihuang.training.loss import CausalLMLoss
from qihuang.training.metrics import TensorBoard, flops_per_token, peak_tflops
from qihuang.training.schedule import SpikeGuard, lr_at, steps_in_budget

FAULT_ENV = "QIHUANG_FAULT_AT_STEP"
"""Testing aid: kill -9 this process right after the given optimizer step (exact-resume test)."""


class MicroBatchTooLarge(RuntimeError):
    """The micro-batch ran out of accelerator memory; the message names the largest one that fits."""


def largest_fitting_batch_size(loss_mod: Any, data: PackedData, device: Any, start: int) -> int:
    """Probe forward+backward with halved micro-batches after an out-of-memory error; 0 if none fits."""
    import torch

    mb = start // 2
    while mb >= 1:
        try:
            batch = {k: v.to(device) for k, v in data.batch(data.sample_ids(0, mb)).items()}
            loss_mod(**batch).backward()
            return mb
        except torch.OutOfMemoryError:
            mb //= 2
        finally:
            for p in loss_mod.parameters():
                p.grad = None
            if getattr(device, "type", "cpu") == "cuda":
                torch.cuda.empty_cache()
    return 0


@dataclass
class LoopSettings:
    """What the loop needs (filled from PretrainConfig)."""

    seq_len: int
    batch_size: int
    """Sequences per forward/backward pass (per process): the micro-batch."""
    grad_accum: int
    learning_rate: float
    """Peak learning rate."""
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    clip: float
    max_steps: int
    schedule_steps: int
    spike_factor: float
    spike_max_in_row: int
    spike_grad_factor: float
    rollback_lr_factor: float
    checkpoint_every_steps: int
    checkpoint_every_minutes: float
    keep_checkpoints: int
    eval_every: int
    log_every: int
    ce_chunk_tokens: int
    compile: bool
    doc_mask: bool
    peak_tflops: float | None
    tensorboard: bool
    embed_lr_mult: float = 1.0
    """LR multiplier of the token-embedding / LM-head matrices (new vocabulary rows learn from few occurrences)."""
    fit_schedule_to_time: bool = False
    """With a time budget: after a few timed steps, shorten the cosine schedule to the steps the budget allows
    (stored in checkpoints, so a resumed run keeps the same schedule), so that the LR is annealed at the end."""


def embedding_params(model: Any) -> set[int]:
    """ids of the input-embedding and LM-head weights (also inside a peft wrapper: its trainable-token deltas)."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = {id(mod.weight) for mod in (m.get_input_embeddings(), m.get_output_embeddings())
             if mod is not None and getattr(mod, "weight", None) is not None}
    for name, p in model.named_parameters():  # peft: trainable_token_indices deltas, modules_to_save copies
        if p.requires_grad and ("embed_tokens" in name or "lm_head" in name):
            found.add(id(p))
    return found


def _optimizer(model: Any, params: list[Any], s: LoopSettings, device: Any) -> Any:
    """AdamW; groups: matrices (decayed), vectors, embeddings/LM head (lr × embed_lr_mult, not decayed)."""
    import torch

    emb = embedding_params(model)
    decay = [p for p in params if p.ndim >= 2 and id(p) not in emb]
    no_decay = [p for p in params if p.ndim < 2 and id(p) not in emb]
    embed = [p for p in params if id(p) in emb]
    groups = [{"params": decay, "weight_decay": s.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
              {"params": embed, "weight_decay": 0.0, "lr_mult": s.embed_lr_mult}]
    groups = [g for g in groups if g["params"]]
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=s.learning_rate, betas=(0.9, 0.95), eps=1e-8, **fast)


def train_loop(model: Any, data: PackedData, s: LoopSettings, accelerator: Any, ckpt_root: Path, metrics: Any,
               train_seconds: float | None, evaluate: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train `model` in place; resumes from `ckpt_root` if it holds a checkpoint. Returns counters."""
    import torch

    main = accelerator.is_main_process
    world = accelerator.num_processes
    rank = accelerator.process_index
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    cfg = getattr(model, "config", None) or model.get_base_model().config
    fpt = flops_per_token(n_params, n_train, cfg.num_hidden_layers, cfg.hidden_size, s.seq_len)
    peak = peak_tflops(accelerator.device, s.peak_tflops)
    opt = _optimizer(model, params, s, accelerator.device)
    loss_mod = CausalLMLoss(model, s.ce_chunk_tokens, s.doc_mask, s.compile)
    loss_mod, opt = accelerator.prepare(loss_mod, opt)
    guard = SpikeGuard(factor=s.spike_factor, max_in_row=s.spike_max_in_row, grad_factor=s.spike_grad_factor)
    st: dict[str, Any] = {"step": 0, "tokens": 0, "train_seconds": 0.0, "lr_scale": 1.0, "evals": [],
                          "schedule_steps": s.schedule_steps, "schedule_fitted": False}
    warn = (lambda m: metrics.log(event="warning", message=m)) if main else None

    def restore(rollback: bool = False) -> bool:
        meta = load_latest(accelerator, ckpt_root, warn)
        if meta is None:
            return False
        for k in ("step", "tokens", "train_seconds", "lr_scale", "evals"):
            st[k] = meta[k]
        st["schedule_steps"] = meta.get("schedule_steps", s.schedule_steps)
        st["schedule_fitted"] = meta.get("schedule_fitted", False)
        guard.load(meta["guard"], keep_counters=rollback)
        return True

    resumed_from = st["step"] if restore() else None
    if resumed_from is not None and main:
        metrics.log(event="resumed", step=st["step"])
    tb = TensorBoard(ckpt_root.parent / "tensorboard", s.tensorboard and main, warn)
    G = s.batch_size * s.grad_accum * world
    fault = int(os.environ.get(FAULT_ENV, "0") or 0)
    session_t0 = time.time()
    base_seconds = st["train_seconds"]
    last_ckpt_t = time.time()
    win_t, win_tokens = time.time(), 0
    opt.zero_grad(set_to_none=True)
    # (step at which to fit the schedule, time the timing window opened, step it opened at): steps 2..8 timed
    fit_at: list[Any] | None = None
    if s.fit_schedule_to_time and train_seconds is not None and not st["schedule_fitted"]:
        fit_at = [st["step"] + 8, None, st["step"] + 1]

    def checkpoint() -> None:
        nonlocal last_ckpt_t
        meta = {k: st[k] for k in ("tokens", "lr_scale", "evals", "schedule_steps", "schedule_fitted")}
        meta["train_seconds"] = base_seconds + time.time() - session_t0
        meta["guard"] = guard.state()
        save_checkpoint(accelerator, ckpt_root, st["step"], meta, keep=s.keep_checkpoints, warn=warn)
        last_ckpt_t = time.time()

    stop_reason = "max_steps"
    from qihuang.progress import bar

    pbar = bar(st["schedule_steps"] if main else 0, "pretrain", "step", initial=st["step"])
    while st["step"] < s.max_steps:
        elapsed = base_seconds + time.time() - session_t0
        if train_seconds is not None and elapsed >= train_seconds:
            stop_reason = "time_budget"
            break
        step = st["step"]
        ids = data.sample_ids(step * G, G)
        n_valid = data.n_targets(ids)
        if fit_at is not None and step == fit_at[0] and not st["schedule_fitted"]:
            per_step = (time.time() - fit_at[1]) / max(fit_at[0] - fit_at[2], 1)
            left = (train_seconds or 0.0) - (base_seconds + time.time() - session_t0)
            fitted = steps_in_budget(step, per_step, left)
            if world > 1:  # every rank must follow the same schedule: the slowest one's
                fitted = int(accelerator.gather(torch.tensor([fitted], device=accelerator.device)).min())
            st["schedule_steps"] = max(min(fitted, s.schedule_steps), s.warmup_steps + 1, step + 1)
            st["schedule_fitted"] = True
            if main:
                metrics.log(event="schedule_fitted", step=step, schedule_steps=st["schedule_steps"],
                            seconds_per_step=round(per_step, 3))
        lr = lr_at(step, s.learning_rate, s.warmup_steps, st["schedule_steps"], s.min_lr_ratio) * st["lr_scale"]
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        nll_sum = torch.zeros((), device=accelerator.device)
        try:
            for a in range(s.grad_accum):
                lo = (a * world + rank) * s.batch_size
                batch = {k: v.to(accelerator.device) for k, v in data.batch(ids[lo:lo + s.batch_size]).items()}
                sync = contextlib.nullcontext() if a == s.grad_accum - 1 else accelerator.no_sync(loss_mod)
                with sync, accelerator.autocast():
                    nll = loss_mod(**batch)
                    accelerator.backward(nll * world / n_valid)
                nll_sum += nll.detach().float()
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            with accelerator.autocast():
                fits = largest_fitting_batch_size(loss_mod, data, accelerator.device, s.batch_size)
            hint = (f"the largest that fits is {fits}: rerun with --batch-size {fits} --grad-accum "
                    f"{max(s.grad_accum * s.batch_size // fits, 1)} for the same global batch"
                    if fits else "even batch_size=1 does not fit: lower seq_len, use LoRA or grad_checkpoint")
            raise MicroBatchTooLarge(f"batch_size={s.batch_size} at seq_len={s.seq_len} ran out of memory; "
                                     + hint) from None
        loss = float(accelerator.reduce(nll_sum, reduction="sum")) / n_valid
        # the norm before clipping (clip=0: max_norm=inf only measures it; DeepSpeed clips inside and gives None);
        # a skipped step's gradient is dropped
        norm = accelerator.clip_grad_norm_(params, s.clip if s.clip > 0 else float("inf"))
        grad_norm = float(norm) if norm is not None else None
        decision = guard.check(loss, grad_norm)
        if decision == "ok":
            opt.step()
        opt.zero_grad(set_to_none=True)
        if decision == "rollback":
            scale = st["lr_scale"] * s.rollback_lr_factor
            if list_checkpoints(ckpt_root):
                restore(rollback=True)
                session_t0, base_seconds = time.time(), st["train_seconds"]
            st["lr_scale"] = scale
            if main:
                metrics.log(event="rollback", step=st["step"], lr_scale=scale, loss=loss)
            continue
        st["step"] += 1
        pbar.total = st["schedule_steps"]
        pbar.update(1)
        if fit_at is not None and st["step"] == fit_at[2]:
            fit_at[1] = time.time()  # the first step (warm-up of kernels, allocations) is not timed
        st["tokens"] += G * s.seq_len
        win_tokens += G * s.seq_len
        if main and (st["step"] % s.log_every == 0 or st["step"] == s.max_steps):
            dt = max(time.time() - win_t, 1e-9)
            tps = win_tokens / dt
            row = {"step": st["step"], "loss": round(loss, 5), "lr": lr, "tokens": st["tokens"],
                   "tokens_per_s": round(tps, 1), "skipped": guard.skipped, "decision": decision}
            if grad_norm is not None:
                row["grad_norm"] = round(grad_norm, 4)
            if peak:
                row["mfu"] = round(tps * fpt / (peak * 1e12), 4)
            metrics.log(**row)
            tb.log(st["step"], row)
            pbar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}", refresh=False)
            win_t, win_tokens = time.time(), 0
        if evaluate and s.eval_every > 0 and st["step"] % s.eval_every == 0 and st["step"] < s.max_steps:
            if main:
                res = evaluate(accelerator.unwrap_model(loss_mod).model)
                st["evals"].append({"step": st["step"], **res})
                metrics.log(step=st["step"], **res)
                tb.log(st["step"], res)
            accelerator.wait_for_everyone()
            win_t = time.time()
        due_steps = s.checkpoint_every_steps > 0 and st["step"] % s.checkpoint_every_steps == 0
        due_time = s.checkpoint_every_minutes > 0 and time.time() - last_ckpt_t >= s.checkpoint_every_minutes * 60
        if (due_steps or due_time) and st["step"] < s.max_steps:
            checkpoint()
        if fault and st["step"] == fault:
            os.kill(os.getpid(), signal.SIGKILL)
    tb.close()
    pbar.close()
    total_seconds = base_seconds + time.time() - session_t0
    return {"steps": st["step"], "tokens": st["tokens"], "train_seconds": round(total_seconds, 2),
            "tokens_per_s": round(st["tokens"] / max(total_seconds, 1e-9), 1), "skipped_steps": guard.skipped,
            "grad_skipped_steps": guard.grad_skipped, "rollbacks": guard.rollbacks, "lr_scale": st["lr_scale"],
            "stop_reason": stop_reason, "resumed_from_step": resumed_from, "evals": st["evals"],
            "flops_per_token": fpt, "schedule_steps": st["schedule_steps"], "trainable_params": n_train,
            "params": n_params}
