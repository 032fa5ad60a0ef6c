"""What the fine-tuning stages load and write (#6): the start model, adapter + merged model with the lineage record
that `qihuang.merge.merge_run` follows, and pass-through copies."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qihuang.runs import atomic_path, write_json


def load_start_model(model_dir: Path, dtype: str = "float32") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, start record) from a merged HF dir or an adapter dir (merged onto its base by
    `models.load_model`, the one loader), in `dtype`."""
    from qihuang.models import adapter_base, load_model, prepare_model

    model_dir = Path(model_dir)
    base = adapter_base(model_dir)
    model, tok = load_model(model_dir, dtype=dtype)
    if base is None:
        return model, tok, {"model_dir": str(model_dir), "kind": "merged"}
    return model, tok, {"model_dir": str(model_dir), "kind": "adapter", "base": str(prepare_model(base))}


def save_outputs(model: Any, tokenizer: Any, out_dir: Path, stage: str, base: dict[str, Any], method: str,
                 data: list[str], system_prompt: str | None = None) -> dict[str, str | None]:
    """Write out_dir/adapter (if a PEFT model) and out_dir/model (merged, tokenizer + chat template, and the
    trained default system prompt in qihuang_template.json) atomically, and out_dir/lineage.json (stage, start
    model, adapter, method, data) that `qihuang.merge.merge_run` follows."""
    from peft import PeftModel

    from qihuang.template import DEFAULTS_FILE

    adapter = None
    if isinstance(model, PeftModel):
        with atomic_path(out_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        adapter = "adapter"
        model = model.merge_and_unload()
    model.config.use_cache = True
    with atomic_path(out_dir / "model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if system_prompt:
            write_json(tmp / DEFAULTS_FILE, {"system_prompt": system_prompt})
    write_json(out_dir / "lineage.json", {"stage": stage, "base": base.get("model_dir"), "start": base,
                                          "adapter": adapter, "model": "model", "method": method, "data": data})
    return {"model": str(out_dir / "model"), "adapter": str(out_dir / adapter) if adapter else None}


def save_trained(trainer: Any, tokenizer: Any, out_dir: Path, **kwargs: Any) -> dict[str, str | None]:
    """`save_outputs` for a Hugging Face trainer's model: unwrapped from its DDP wrapper and written by the main
    process only (under `accelerate launch` every process runs the stage; the others wait until it is written).
    Returns the same paths on every process."""
    from peft import PeftModel

    from qihuang.finetune.distributed import shards_parameters

    model = trainer.accelerator.unwrap_model(trainer.model)
    paths: dict[str, str | None] = {"model": str(out_dir / "model"),
                                    "adapter": str(out_dir / "adapter") if isinstance(model, PeftModel) else None}
    if shards_parameters():
        model = unsharded(trainer, model)
    if trainer.is_world_process_zero():
        paths = save_outputs(model, tokenizer, out_dir, **kwargs)
    trainer.accelerator.wait_for_everyone()
    return paths


def unsharded(trainer: Any, model: Any) -> Any:
    """Under DeepSpeed ZeRO-3 or FSDP each process holds a shard of every weight (ZeRO-3 leaves the model's own
    tensors empty, FSDP2 turns them into DTensors): every process takes part in gathering the full state dict
    (ZeRO-3: `stage3_gather_16bit_weights_on_model_save`, the presets' `zero3_save_16bit_model`; FSDP2: torch's
    full state dict, offloaded to the CPU), and the main process loads it into a fresh copy of the model — the same
    architecture and adapters, built from its class and config — which it returns (the others get `model` back,
    unused)."""
    import copy

    from peft import PeftModel, get_peft_model

    from qihuang.training import fsdp

    state = _full_state_dict(trainer)
    if not trainer.is_world_process_zero():
        return model
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    # the class itself, not from_config: that would build it under deepspeed.zero.Init, sharded again (collective);
    # FSDP2 swapped the model's class for a sharded subclass (FSDPLlamaForCausalLM): the class it was made from
    fresh = fsdp.unsharded_class(base)(copy.deepcopy(base.config)).to(next(iter(state.values())).dtype)
    if isinstance(model, PeftModel):
        fresh = get_peft_model(fresh, model.peft_config[model.active_adapter])
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    lost = [k for k in missing if not any(k.endswith(t) for t in tied)]
    if lost or unexpected:
        raise RuntimeError(f"sharded save: gathered weights do not fit the model (missing {lost[:5]}, "
                           f"unexpected {unexpected[:5]})")
    fresh.tie_weights()
    return fresh


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model directory atomically (pass-through stages)."""
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)


def _full_state_dict(trainer: Any) -> dict[str, Any]:
    """The trained model's whole state dict on the main process (gathered by every process); a model FSDP2 sharded
    as the pretraining loop gathers it (`training.fsdp`)."""
    from qihuang.training import fsdp

    if fsdp.is_sharded(trainer.model_wrapped):
        return fsdp.gathered_weights(trainer.model_wrapped, trainer.is_world_process_zero()) or {}
    return trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}  # ZeRO-3: None on the other processes
