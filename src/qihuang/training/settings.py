"""`LoopSettings`: what the training loop reads (steps, batch, LR schedule, clipping, spike guard, checkpoints,
logging, kernels), each field documented once. `PretrainConfig` inherits these fields (recipe keys and flags stay
flat) and is handed to `train_loop` as it is; tests and benchmarks may build a bare `LoopSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from qihuang.config import ConfigError, check_ranges


@dataclass
class LoopSettings:
    """Settings of `qihuang.training.loop.train_loop` (range errors name them `pretrain.<field>`)."""

    max_steps: int = 100
    """Stop after this many optimizer steps."""
    schedule_steps: int | None = None
    """Length of the cosine schedule in steps (default: max_steps)."""
    fit_schedule: bool = True
    """With max_minutes: after 7 timed steps, shorten the cosine schedule to the steps the time budget allows,
    so the LR is annealed by the end (the fitted length is kept in checkpoints for exact resume)."""
    seq_len: int = 256
    """Tokens per packed training sequence."""
    batch_size: int = 4
    """Sequences per forward/backward pass (per process: the micro-batch)."""
    grad_accum: int = 1
    """Batches (of batch_size) accumulated per optimizer step."""
    learning_rate: float = 3e-4
    """Peak learning rate."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of the peak LR."""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    embed_lr_mult: float = 1.0
    """LR multiplier for the token embeddings / LM head (no weight decay there). On the 2-core demo both ×3 and
    ×0.3 did worse than ×1 (benchmarks/RESULTS.md, session 2). 0 (full mode) freezes them: no gradients and
    no optimizer state for their rows — 12 bytes a parameter less (SmolLM2-135M: 28.3M tied rows, −0.34 GB) and
    no LM-head weight gradient to compute (~25% faster CPU steps)."""
    checkpoint_every_steps: int = 50
    """Checkpoint every N optimizer steps (0: off)."""
    checkpoint_every_minutes: float = 10.0
    """Also checkpoint when this many minutes passed since the last one (0: off)."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones deleted)."""
    eval_every: int = 0
    """Evaluate held-out bits/char every N steps (0: only before and after)."""
    spike_factor: float = 3.0
    """Skip a step whose loss exceeds this × its moving average (0: off)."""
    spike_grad_factor: float = 0.0
    """Also skip a step whose gradient norm (before clipping) exceeds this × the moving average of accepted
    steps' norms (0: off)."""
    spike_max_in_row: int = 3
    """That many skipped steps in a row roll back to the last checkpoint with a lower LR."""
    rollback_lr_factor: float = 0.5
    """LR multiplier applied at each rollback."""
    log_every: int = 1
    """Log metrics every N steps."""
    ce_chunk_tokens: int = 0
    """Compute the LM head + loss in chunks of this many tokens, recomputed in backward (0: in one piece)."""
    compile: bool = False
    """torch.compile each decoder layer and the loss (pays off on GPU; costs 20–50 s on CPU)."""
    doc_mask: bool = True
    """Keep attention inside each packed document (false: plain causal attention over the block, fastest
    kernels; positions still restart per document)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s for the MFU estimate (default: known GPUs only)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the `tensorboard` extra: pip install -e '.[tensorboard]'; asked for
    without it → a warning on stderr and in metrics.jsonl, training goes on)."""

    @property
    def schedule_length(self) -> int:
        """Steps of the cosine schedule before any fitting to a time budget: schedule_steps, else max_steps."""
        return self.schedule_steps or self.max_steps

    def __post_init__(self) -> None:
        nonneg = (0, None, False)
        check_ranges("pretrain", self, max_steps=(1, None, False), seq_len=(8, None, False),
                     batch_size=(1, None, False), grad_accum=(1, None, False), learning_rate=(0, None, True),
                     min_lr_ratio=(0, 1, False), embed_lr_mult=nonneg, log_every=(1, None, False),
                     keep_checkpoints=(1, None, False), weight_decay=nonneg, rollback_lr_factor=(0, 1, True),
                     clip=nonneg, spike_factor=nonneg, spike_grad_factor=nonneg, spike_max_in_row=(1, None, False),
                     checkpoint_every_steps=nonneg, checkpoint_every_minutes=nonneg, eval_every=nonneg,
                     ce_chunk_tokens=nonneg, warmup_steps=nonneg, peak_tflops=(0, None, True))
        if self.schedule_steps is not None and self.schedule_steps < self.max_steps:
            raise ConfigError("pretrain.schedule_steps must be >= max_steps")
        if self.warmup_steps >= self.schedule_length and self.max_steps > 1:
            raise ConfigError("pretrain.warmup_steps must be < the schedule length (max_steps)")
