"""Causal-LM loss from hidden states: summed cross-entropy over scored targets, optionally in chunks whose
logits are recomputed in backward (the full [tokens × vocab] fp32 logits are never held)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IGNORE = -100


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def causal_lm_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 0) -> torch.Tensor:
    """Sum of token NLLs (nats). `hidden` [B, T, H], `targets` [B, T] (already shifted, IGNORE = not scored)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    keep = y != IGNORE
    h, y = h[keep], y[keep]
    if chunk_tokens <= 0 or h.shape[0] <= chunk_tokens:
        return _ce_sum(head, h, y)
    from torch.utils.checkpoint import checkpoint

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_tokens):
        total = total + checkpoint(_ce_sum, head, h[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
    return total


class CausalLMLoss(nn.Module):
    """Wraps a HF causal LM (or a peft model) so that DDP/FSDP see one forward: (inputs, positions, targets) →
    summed NLL. Position ids with no attention mask make HF attend only inside each packed document."""

    def __init__(self, model: nn.Module, chunk_tokens: int = 0, doc_mask: bool = True, compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.doc_mask = doc_mask
        self.compiled = compile
        if compile:  # regional compilation: one graph per decoder layer (shared by all layers), one for the loss
            for layer in self._parts()[0].layers:
                layer.compile()

    def tie_weights(self) -> None:
        """Tie the model's input and output embeddings again where its config ties them: accelerate's FSDP2
        preparation calls this on the module it shards once it has moved it to the meta device (which unties them:
        the head would train as a second matrix)."""
        self.model.tie_weights()

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        m: Any = self.model
        if hasattr(m, "get_base_model"):  # peft
            m = m.get_base_model()
        return m.get_decoder(), m.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        decoder, head = self._parts()
        # no mask: HF derives a block-diagonal causal mask from the position ids (no attention across documents);
        # doc_mask=False: plain causal attention (fastest kernels), positions still restart per document
        mask = None if self.doc_mask else torch.ones_like(input_ids)
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         use_cache=False).last_hidden_state
        if self.compiled:
            return _compiled_nll(head, hidden, targets, self.chunk_tokens)
        return causal_lm_nll(head, hidden, targets, self.chunk_tokens)


_COMPILED: dict[str, Any] = {}


def _compiled_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    if "ce" not in _COMPILED:
        _COMPILED["ce"] = torch.compile(_ce_sum)
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    if chunk_tokens <= 0 or h.shape[0] <= chunk_tokens:
        return _COMPILED["ce"](head, h, y)
    from torch.utils.checkpoint import checkpoint

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_tokens):
        total = total + checkpoint(_COMPILED["ce"], head, h[i:i + chunk_tokens], y[i:i + chunk_tokens],
                                   use_reentrant=False)
    return total
