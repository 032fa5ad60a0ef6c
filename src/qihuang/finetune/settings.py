"""`FinetuneSettings`: what SFT and DPO share — the adapter, the budget and LR schedule, the chat template, where and
in what precision they train — each field documented and range-checked once. `SFTConfig` and `DPOConfig` inherit
them (recipe keys and CLI flags stay flat, the same names in both stages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from qihuang.config import check_ranges
from qihuang.placement import Device, Precision


@dataclass
class FinetuneSettings:
    """Settings of a fine-tuning stage (range errors name them `<stage>.<field>`)."""

    stage: ClassVar[str] = "finetune"
    """The stage's name in error messages (`sft`, `dpo`)."""

    method: Literal["lora", "full"] = "lora"
    """LoRA adapter or full fine-tuning (DPO's reference model: the adapter switched off, or a frozen copy)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    """LoRA target modules (module names such as q_proj, v_proj, or all-linear)."""
    epochs: float = 1.0
    """Passes over the training data (max_steps overrides)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_minutes: float | None = None
    """Time budget for training: stop (saving a checkpoint) after this many minutes."""
    fit_schedule: bool = True
    """With max_minutes: fit the warm-up + cosine LR schedule to the steps the budget allows (re-estimated every
    step), so the LR anneals by the end instead of stopping near its peak (as pretrain's fit_schedule)."""
    chat_template: str = "auto"
    """Chat template: auto (the model's own), chatml, llama2, ziya (HuangDI's `<human>:`/`<bot>:`) or a .jinja
    file; saved with the trained model's tokenizer, so chat, serve and export use it (`qihuang.chat_templates`)."""
    batch_size: int = 4
    """Examples per step and process: packed rows (SFT) or preference pairs (DPO)."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    learning_rate: float = 2e-4
    """Peak learning rate (LoRA SFT's default; use ~2e-5 for full fine-tuning)."""
    device: Device = "auto"
    """Where to train: auto (CUDA when a GPU is visible, else the CPU), cpu or cuda (`qihuang.placement`)."""
    precision: Precision = "auto"
    """Mixed precision: auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16. A LoRA
    base on CUDA is loaded in that half precision."""
    seed: int = 0
    """Random seed."""

    def __post_init__(self) -> None:
        from qihuang.chat_templates import resolve

        resolve(self.chat_template)  # an unknown name or a missing file fails at load, not after data prep
        check_ranges(self.stage, self, lora_r=(0, None, True), lora_alpha=(0, None, True),
                     lora_dropout=(0, 1, False, True), max_steps=(0, None, True), max_minutes=(0, None, True),
                     batch_size=(0, None, True), grad_accum=(0, None, True), epochs=(0, None, True),
                     learning_rate=(0, None, True))
