"""Static-KV-cache decoding: the cache is allocated once for the whole context, so the one-token decode step has
fixed shapes; on CUDA that step is captured once in a CUDA graph and replayed (no per-layer launch overhead)."""

from __future__ import annotations

from typing import Any


def cache_kwarg(model: Any) -> str:
    """Name of the forward's KV-cache argument (`cache` in recent transformers, `past_key_values` before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class StaticDecoder:
    """Prefill + one-token steps over a `StaticCache`; `step` replays a CUDA graph when `graph` is on."""

    def __init__(self, model: Any, max_len: int, graph: bool | None = None) -> None:
        import torch
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.use_graph = (self.device.type == "cuda") if graph is None else graph
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.graph: Any = None
        self.out: Any = None
        self.length = 0
        self.kw = cache_kwarg(model)

    def _run_step(self) -> Any:
        return self.model(input_ids=self.tok, cache_position=self.pos, position_ids=self.pos.view(1, 1),
                          use_cache=True, logits_to_keep=1, **{self.kw: self.cache}).logits

    def prefill(self, ids: list[int]) -> Any:
        """Reset the cache and run the prompt; returns the last position's logits (1-D)."""
        import torch

        if len(ids) >= self.max_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit the static cache of {self.max_len}")
        inp = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.arange(len(ids), device=self.device)
        with torch.inference_mode():
            self.cache.reset()  # the cache's tensors are created lazily under inference mode
            logits = self.model(input_ids=inp, cache_position=pos, position_ids=pos.view(1, -1), use_cache=True,
                                logits_to_keep=1, **{self.kw: self.cache}).logits
        self.length = len(ids)
        return logits[0, -1].float()

    def _capture(self) -> None:
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up on a side stream (allocator, lazy init); writes land in unused slots
                self._run_step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            self.out = self._run_step()
        self.graph = graph

    def step(self, token: int) -> Any:
        """Feed `token` at the next position; returns the next logits (1-D, float)."""
        import torch

        if self.length >= self.max_len:
            raise ValueError("static cache full")
        self.tok.fill_(token)
        self.pos.fill_(self.length)
        if self.use_graph:
            if self.graph is None:
                saved = self.length
                self._capture()
                self.length = saved
                self.tok.fill_(token)
                self.pos.fill_(self.length)
            self.graph.replay()
            logits = self.out
        else:
            with torch.inference_mode():
                logits = self._run_step()
        self.length += 1
        return logits[0, -1].float()
