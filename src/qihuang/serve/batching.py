"""Continuous batching for the hf engine and for eval: requests are decoded together, one forward per step for all
of them (left-padded KV cache, per-row positions); a request joins the running batch at the next step and leaves it
when it ends, so nobody waits for a whole batch to finish. With one request it is plain one-stream decoding."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from qihuang.decoding import Repetition
from qihuang.serve.kvcache import SharedPrefix
from qihuang.serve.textstream import Drafter

_END = object()
"""Put on a request's queue after its last token."""

PREFILL_TOKENS = 4096
"""At most this many (left-padded) prompt tokens a prefill forward: the prompts that arrive together are prefilled
in groups and joined to the batch one group after another. Decoding 32 demo retrieval questions 16 rows at a time
(~750-token prompts) peaked at 2,217 MB with one prefill forward for all 16 and 2,018 MB in groups, in the same time
(65.9 vs 62.6 s; benchmarks/RESULTS.md, session 9)."""


@dataclass(eq=False)
class Request:
    """One generation in the batch: its prompt, how to pick tokens, and where they go."""

    prompt_ids: list[int]
    """The rendered, encoded prompt."""
    pick: Callable[[Any, Any], int]
    """(logits of this row (1-D), repetition state) → next token (greedy or sampled, with the request's settings)."""
    max_new_tokens: int
    """Tokens to generate at most (EOS excluded)."""
    cancelled: Callable[[], bool]
    """True when the client went away (the row leaves the batch at the next step)."""
    rep: Repetition
    """Repetition-control state over the tokens generated so far."""
    drafter: Drafter | None = None
    """Greedy requests: proposes draft tokens to verify in one forward while this row decodes alone (prompt
    lookup)."""
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    """Generated token ids, then `_END` (or an exception)."""
    produced: int = 0
    """Tokens handed out so far."""
    length: int = 0
    """Real (unpadded) tokens of this row in the KV cache."""
    nxt: int = -1
    """The token to feed at the next step."""


def batchable(model: Any) -> bool:
    """Whether rows of `model`'s KV cache can be padded and joined: every layer a plain full-attention dynamic
    layer (sliding-window or linear-attention layers are not; such models decode one request at a time)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config DynamicCache cannot read: no batching
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class BatchDecoder:
    """A worker thread that owns the model's forward passes: admits waiting requests between steps (up to
    `max_batch` rows), prefills the new ones as left-padded batches of at most `PREFILL_TOKENS`, joins them to the
    running KV cache, then decodes one token for every row per forward."""

    def __init__(self, model: Any, eos_ids: frozenset[int], mask: Callable[[Any], Any], cache_kw: str,
                 max_batch: int = 16, lock: threading.Lock | None = None, max_tokens: int = 0,
                 learn_prefix: bool = False) -> None:
        if max_batch < 1 or max_tokens < 0:
            raise ValueError(f"need max_batch >= 1 and max_tokens >= 0, got {max_batch} and {max_tokens}")
        self.model = model
        self.eos_ids = eos_ids
        self.mask = mask
        self.cache_kw = cache_kw
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        """KV positions the batch may come to hold (rows x the widest row's prompt + new tokens; 0 = no bound): a
        request waits while admitting it would go beyond, so short prompts decode many rows at once and long ones
        fewer, in about the same memory."""
        self._held: Request | None = None
        """The next request in line, taken from `pending` but not admitted yet (it did not fit)."""
        self.lock = lock or threading.Lock()
        self.device = next(model.parameters()).device
        self.pending: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.rows: list[Request] = []
        self.cache: Any = None
        self.attn: Any = None  # [rows, width] 1 = real token, 0 = left padding
        self.steps = 0
        """Forward passes run (prefills + decode steps)."""
        self.widest = 0
        """Most rows decoded in one forward so far."""
        self.prefix: SharedPrefix | None = None
        """A prompt opening whose keys/values were computed once (`share_prefix`): prompts that open with it
        prefill only their own tokens."""
        self.learn_prefix = learn_prefix
        """Serving: the opening that arriving prompts share with the previous one (system prompt, passages header)
        becomes the shared prefix by itself (`_learn_prefix`)."""
        self._last: list[int] = []
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    # ---- public ------------------------------------------------------------------------------------------
    def share_prefix(self, ids: Sequence[int]) -> None:
        """Compute the keys and values of the prompt opening `ids` once; prompts that open with it then prefill
        only the tokens after it (their rows get a copy). Empty `ids`: share nothing."""
        import torch
        from transformers import DynamicCache

        if not ids:
            self.prefix = None
            return
        cache = DynamicCache(config=self.model.config)
        row = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        self._forward(row, torch.ones_like(row), torch.arange(len(ids), device=self.device)[None], cache)
        self.prefix = SharedPrefix(list(ids), [(layer.keys, layer.values) for layer in cache.layers])

    def submit(self, req: Request) -> Iterator[int]:
        """Queue `req` and yield its tokens as the batch produces them (stops at EOS, max_new_tokens, cancel)."""
        self._ensure_thread()
        self.pending.put(req)
        while True:
            item = req.out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield int(item)

    def run(self, requests: Sequence[Request], progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Decode every request to its end in the calling thread (no worker; for batch jobs such as eval): up to
        `max_batch` rows at once, a finished row's place taken by the next request at the next step. Returns
        each request's tokens (EOS excluded) in order; `progress(done, total)` is called as requests finish."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("BatchDecoder.run: the decoder already serves requests from its worker thread")
        for req in requests:
            self.pending.put(req)
        tokens: dict[int, list[int]] = {id(r): [] for r in requests}
        live = list(requests)
        try:
            while self.rows or self._held is not None or not self.pending.empty():
                fresh = self._admit(block=False)
                if fresh:
                    self._prefill(fresh)
                if self.rows:
                    self._step()
                before = len(live)
                live = [r for r in live if not self._collect(r, tokens[id(r)])]
                if progress and len(live) < before:
                    progress(len(requests) - len(live), len(requests))
        except BaseException:
            self.rows, self.cache, self.attn, self._held = [], None, None, None
            while not self.pending.empty():
                self.pending.get_nowait()
            raise
        return [tokens[id(r)] for r in requests]

    @staticmethod
    def _collect(req: Request, into: list[int]) -> bool:
        """Move `req`'s queued tokens into `into`; True once its end was queued."""
        while not req.out.empty():
            item = req.out.get_nowait()
            if item is _END:
                return True
            into.append(int(item))
        return False

    # ---- worker ------------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="qihuang-batch", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            fresh = self._admit()
            try:
                if fresh:
                    self._prefill(fresh)
                if self.rows:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - every waiting client gets the error; the worker lives on
                for req in dict.fromkeys([*self.rows, *fresh]):
                    req.out.put(exc)
                self.rows, self.cache, self.attn = [], None, None

    def _admit(self, block: bool = True) -> list[Request]:
        """New requests to join: block while the batch is empty (when `block`), else take what is waiting."""
        fresh: list[Request] = []
        if not self.rows and block and self._held is None:
            fresh.append(self.pending.get())
        while len(self.rows) + len(fresh) < self.max_batch:
            req, self._held = self._held, None
            if req is None:
                try:
                    req = self.pending.get_nowait()
                except queue.Empty:
                    break
            if not self._fits([*self.rows, *fresh], req):
                self._held = req
                break
            fresh.append(req)
        return [r for r in fresh if not self._finish_if_cancelled(r)]

    def _fits(self, batch: list[Request], req: Request) -> bool:
        """Whether `req` may join `batch` within `max_tokens` (always into an empty batch): rows x the widest
        reach, a row's reach being what its cache will hold at its end (prompt + all its new tokens)."""
        if not self.max_tokens or not batch:
            return True

        def reach(r: Request) -> int:
            return (r.length or len(r.prompt_ids)) + r.max_new_tokens - r.produced

        return (len(batch) + 1) * max(reach(r) for r in [*batch, req]) <= self.max_tokens

    def _finish_if_cancelled(self, req: Request) -> bool:
        if req.cancelled():
            req.out.put(_END)
            return True
        return False

    def _forward(self, ids: Any, attn: Any, positions: Any, cache: Any, keep: int = 1) -> Any:
        """Masked logits: [rows, vocab] for the last position (keep=1), [rows, fed, vocab] for all (keep=0)."""
        import torch

        with self.lock, torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                             logits_to_keep=keep, **{self.cache_kw: cache})
        self.steps += 1
        self.widest = max(self.widest, int(ids.shape[0]))
        logits = out.logits.float()
        return self.mask(logits[:, -1] if keep == 1 else logits)

    def _prefill(self, fresh: list[Request]) -> None:
        """Prefill the new prompts in order, those opening with the shared prefix first, in groups of at most
        `PREFILL_TOKENS` padded tokens run (a longer prompt alone), each group joined to the running batch before
        the next. A group never mixes prompts with and without the opening, so the tokens it runs are those
        counted."""
        if self.learn_prefix:
            self._learn_prefix(fresh)
        opening = [self._opens(r) for r in fresh]
        for part in ([r for r, o in zip(fresh, opening) if o], [r for r, o in zip(fresh, opening) if not o]):
            group: list[Request] = []
            for req in part:
                width = max(self._own(r) for r in [*group, req])
                if group and width * (len(group) + 1) > PREFILL_TOKENS:
                    self._prefill_group(group)
                    group = []
                group.append(req)
            if group:
                self._prefill_group(group)

    def _learn_prefix(self, fresh: list[Request]) -> None:
        """Share the opening of `fresh` and the last prompt seen when the current shared prefix does not open them
        all (computed again only when the opening changes: a server's system prompt, once)."""
        from qihuang.serve.kvcache import common_prefix

        if not all(self._opens(r) for r in fresh):
            opening = common_prefix([r.prompt_ids for r in fresh] + ([self._last] if self._last else []))
            if opening:
                self.share_prefix(opening)
        self._last = list(fresh[-1].prompt_ids)

    def _opens(self, req: Request) -> bool:
        """Whether `req`'s prompt opens with the shared prefix (and has tokens of its own after it)."""
        return self.prefix is not None and self.prefix.opens(req.prompt_ids)

    def _own(self, req: Request) -> int:
        """Prompt tokens `req`'s prefill runs: those after the shared opening when it opens with it."""
        return len(req.prompt_ids) - (len(self.prefix.ids) if self.prefix is not None and self._opens(req) else 0)

    def _prefill_group(self, fresh: list[Request]) -> None:
        """Run the new prompts as one left-padded batch (after the shared opening's cached keys/values when all of
        them open with it), then join their cache rows to the running batch."""
        import torch

        from qihuang.serve.kvcache import left_align, prefix_cache

        prefix = self.prefix if all(self._opens(r) for r in fresh) else None
        shared = len(prefix.ids) if prefix else 0
        width = max(len(r.prompt_ids) for r in fresh) - shared
        ids = torch.zeros((len(fresh), width), dtype=torch.long)
        attn = torch.zeros((len(fresh), shared + width), dtype=torch.long)
        attn[:, :shared] = 1
        for i, req in enumerate(fresh):
            n = len(req.prompt_ids) - shared
            ids[i, width - n:] = torch.tensor(req.prompt_ids[shared:], dtype=torch.long)
            attn[i, shared + width - n:] = 1
            req.length = shared + n
        positions = (attn.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = prefix_cache(self.model.config, prefix, len(fresh))
        attn = attn.to(self.device)
        logits = self._forward(ids.to(self.device), attn, positions.to(self.device), cache)
        self._join(cache, left_align(cache, attn, shared) if shared else attn, fresh)
        self._emit([(req, req.pick(logits[i], req.rep)) for i, req in enumerate(fresh)])

    def _step(self) -> None:
        """One token for every row (several for a lone greedy row whose draft is confirmed)."""
        import torch

        lone = self.rows[0] if len(self.rows) == 1 and self.pending.empty() else None
        if lone is not None and lone.drafter is not None:
            draft = lone.drafter.propose(lone.prompt_ids + lone.rep.tokens, lone.max_new_tokens - lone.produced)
            if draft:
                self._draft_step(self.rows[0], draft)
                return

        ids = torch.tensor([[r.nxt] for r in self.rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.length] for r in self.rows], dtype=torch.long, device=self.device)
        self.attn = torch.cat([self.attn, self.attn.new_ones((len(self.rows), 1))], dim=1)
        logits = self._forward(ids, self.attn, positions, self.cache)
        for r in self.rows:
            r.length += 1
        self._emit([(r, r.pick(logits[i], r.rep)) for i, r in enumerate(self.rows)])

    def _draft_step(self, req: Request, draft: list[int]) -> None:
        """Feed the pending token plus `draft` in one forward; keep the draft tokens greedy decoding confirms
        (exact: the same tokens one at a time would give), drop the rest from the cache."""
        import torch

        from qihuang.serve.textstream import accepted_prefix, verify_draft

        fed = [req.nxt, *draft]
        ids = torch.tensor([fed], dtype=torch.long, device=self.device)
        positions = torch.arange(req.length, req.length + len(fed), device=self.device).view(1, -1)
        attn = torch.cat([self.attn, self.attn.new_ones((1, len(fed)))], dim=1)
        logits = self._forward(ids, attn, positions, self.cache, keep=0)[0]
        best = verify_draft(logits, draft, req.rep)
        accepted = accepted_prefix(draft, best)
        assert req.drafter is not None
        req.drafter.record(len(draft), accepted)
        self.cache.crop(accepted - len(draft))
        self.attn = attn[:, :attn.shape[1] - (len(draft) - accepted)]
        req.length += 1 + accepted
        for tok in [*draft[:accepted], best[accepted]]:
            self._emit([(req, tok)])
            if not self.rows:
                return

    def _emit(self, picked: list[tuple[Request, int]]) -> None:
        """Hand out each row's token; rows that ended (EOS, length, cancelled) leave the batch."""
        done: set[Request] = set()
        for req, tok in picked:
            if tok in self.eos_ids or req.cancelled():
                done.add(req)
                continue
            req.out.put(tok)
            req.produced += 1
            req.rep.push(tok)
            req.nxt = tok
            if req.produced >= req.max_new_tokens:
                done.add(req)
        if done:
            for req in done:
                req.out.put(_END)
            self._drop(done)

    def _join(self, cache: Any, attn: Any, fresh: list[Request]) -> None:
        """Append `fresh`'s cache rows to the running cache (both left-padded to the wider one)."""
        if not self.rows:
            self.cache, self.attn, self.rows = cache, attn, list(fresh)
            return
        import torch.nn.functional as F

        width = max(self.attn.shape[1], attn.shape[1])

        def left_pad(t: Any, dim_from_end: int) -> Any:
            grow = width - t.shape[-dim_from_end]
            if not grow:
                return t
            pad = [0, 0] * (dim_from_end - 1) + [grow, 0]
            return F.pad(t, pad)

        import torch

        from qihuang.serve.kvcache import replace

        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            replace(old, torch.cat([left_pad(old.keys, 2), left_pad(new.keys, 2)], dim=0),
                    torch.cat([left_pad(old.values, 2), left_pad(new.values, 2)], dim=0))
        self.attn = torch.cat([left_pad(self.attn, 1), left_pad(attn, 1)], dim=0)
        self.rows.extend(fresh)

    def _drop(self, done: set[Request]) -> None:
        """Remove finished rows from the batch and trim cache columns that are padding in every remaining row."""
        keep = [i for i, r in enumerate(self.rows) if r not in done]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.attn = None, None
            return
        import torch

        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        live = self.attn.index_select(0, idx)
        first = int(live.any(dim=0).nonzero()[0])  # leading columns that are padding for every row
        self.attn = live[:, first:]
        from qihuang.serve.kvcache import replace

        for layer in self.cache.layers:
            replace(layer, layer.keys.index_select(0, idx)[:, :, first:],
                    layer.values.index_select(0, idx)[:, :, first:])
