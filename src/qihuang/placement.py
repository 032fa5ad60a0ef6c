"""Where a training stage runs and in what precision — one choice for pretrain, SFT and DPO: CUDA when a GPU is
visible, with bf16 (fp16 on GPUs without it); the CPU in fp32 otherwise (bf16 on these CPUs is ~20x slower).
Recipes override it with each stage's `device` and `precision` fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from qihuang.config import ConfigError

Device = Literal["auto", "cpu", "cuda"]
"""A stage's `device` field: auto = CUDA when a GPU is visible, else the CPU."""
Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""A stage's `precision` field: auto = bf16 on a GPU that has it (else fp16), fp32 on the CPU."""


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision."""

    device: Literal["cpu", "cuda"]
    """Where the stage trains."""
    precision: Literal["fp32", "bf16", "fp16"]
    """Mixed-precision mode (autocast) of the training step; fp32: none."""

    def trainer_args(self) -> dict[str, Any]:
        """`transformers.TrainingArguments` keywords: device, mixed precision, and on CUDA the largest micro-batch
        that fits found by halving on out-of-memory (`auto_find_batch_size`) instead of dying mid-run."""
        return {"use_cpu": self.device == "cpu", "bf16": self.precision == "bf16", "fp16": self.precision == "fp16",
                "auto_find_batch_size": self.device == "cuda"}

    def load_dtype(self, method: str) -> str:
        """Torch dtype name to load the start model in: a LoRA base on CUDA in the half precision itself (its
        weights are frozen; peft keeps the adapter in fp32), everything else in fp32 (autocast computes in half)."""
        if method == "lora" and self.device == "cuda" and self.precision != "fp32":
            return "bfloat16" if self.precision == "bf16" else "float16"
        return "float32"

    def place(self, model: Any) -> Any:
        """`model` on this device for what runs before the trainer takes it (probes, reference scores): on CUDA in
        a single process only — under `accelerate launch` the trainer places (or shards) it."""
        import os

        if self.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return model.to("cuda")
        return model

    @property
    def accelerate_mixed_precision(self) -> str:
        """`accelerate.Accelerator(mixed_precision=...)`."""
        return "no" if self.precision == "fp32" else self.precision


def resolve(device: str = "auto", precision: str = "auto", stage: str = "train",
            cuda: bool | None = None, bf16_supported: bool | None = None) -> Placement:
    """The placement a stage's `device`/`precision` fields mean on this machine (`cuda`, `bf16_supported`: what
    torch reports, unless given). A CUDA request without a visible GPU, or fp16 on the CPU, is a ConfigError."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{stage}.device: must be auto, cpu or cuda, got {device!r}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"{stage}.precision: must be auto, fp32, bf16 or fp16, got {precision!r}")
    where: Literal["cpu", "cuda"] = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if where == "cuda" and not cuda:
        raise ConfigError(f"{stage}.device: cuda asked for, but torch sees no GPU (use auto or cpu)")
    if precision == "auto":
        if where == "cpu":
            return Placement("cpu", "fp32")
        if bf16_supported is None:
            bf16_supported = bool(torch.cuda.is_bf16_supported())
        return Placement("cuda", "bf16" if bf16_supported else "fp16")
    if where == "cpu" and precision == "fp16":
        raise ConfigError(f"{stage}.precision: fp16 needs a GPU (use fp32, or bf16 — slow on most CPUs)")
    return Placement(where, precision)  # type: ignore[arg-type]
