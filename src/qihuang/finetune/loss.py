"""The SFT loss (#6): the causal-LM loss of the scored (answer) tokens, with the LM head applied to those positions
only, in chunks, and the trl trainer that uses it (in one process or under `accelerate launch`)."""

from __future__ import annotations

import os
from typing import Any

LOSS_CHUNK_TOKENS = 1024
"""Scored tokens whose logits are computed at once in the SFT loss (recomputed in backward)."""


def scored_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss of a batch as the model's own (summed over scored tokens, divided by
    `num_items_in_batch` or by their count), computed from the decoder's hidden states with the LM head applied
    only to the scored positions, in chunks (`training.loss.causal_lm_nll`): SFT scores the answers, a small
    share of each retrieval prompt, so the [tokens x vocabulary] logits are never built — less memory and less
    compute than the model's forward. Under DeepSpeed ZeRO-3 or FSDP (parameters sharded, gathered only inside the
    model's own forward, from its root module down) and for a head with logit soft-capping (Gemma) it is the model's
    own loss."""
    import torch

    from qihuang.finetune.distributed import inner, shards_parameters
    from qihuang.training.loss import IGNORE, causal_lm_nll

    unwrapped = inner(model)
    base: Any = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    kwargs = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if getattr(text_config, "final_logit_softcapping", None) or shards_parameters():
        extra = {"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}
        return model(input_ids=inputs["input_ids"], labels=inputs["labels"], **kwargs, **extra).loss
    head = base.get_output_embeddings()
    if unwrapped is model:
        hidden = base.get_decoder()(input_ids=inputs["input_ids"], use_cache=False, **kwargs).last_hidden_state
    else:  # through the wrapper's forward, which DDP needs to average the gradients (the head on one position)
        hidden = model(input_ids=inputs["input_ids"], use_cache=False, output_hidden_states=True, logits_to_keep=1,
                       **kwargs).hidden_states[-1]
    labels = inputs["labels"]
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    total = causal_lm_nll(head, hidden, targets, LOSS_CHUNK_TOKENS)
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def plain_loss_trainer(base: type) -> type:
    """`base` (trl's SFTTrainer) with the model's own loss (`scored_loss`): trl's fused LM-head loss reads
    `lm_head.weight` directly and so misses (and crashes on) peft's trainable-token rows for an extended
    vocabulary, and its entropy / token-accuracy logging costs as much as the step itself on CPU."""

    class PlainLossSFTTrainer(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss = scored_loss(model, inputs, num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # as Trainer.compute_loss: the token count is the global one (gathered over processes) and DDP
                # averages the gradients, so each process's share is scaled back up by the number of processes
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            """As the trainer's, with a checkpoint's folder made first under FSDP: with a sharded state dict the
            trainer writes the weights only later (with the optimizer), yet checks on every process right after
            this whether the folder exists to record it as the best checkpoint. The processes then disagreed (the
            main one alone reloaded the best model at the end, waiting for the others forever)."""
            if self.is_fsdp_enabled and output_dir is not None:
                os.makedirs(output_dir, exist_ok=True)
            super().save_model(output_dir, _internal_call)

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            """As the trainer's, without counting the evaluation's batches as trained tokens (`PackedCollator`:
            a validation inside training would otherwise take the place of a training batch in the count)."""
            collator = self.data_collator
            counting = getattr(collator, "counting", None)
            if counting is not None:
                collator.counting = False
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                if counting is not None:
                    collator.counting = counting

    return PlainLossSFTTrainer
