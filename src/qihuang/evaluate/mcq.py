"""Multiple-choice scoring: option log-likelihood with the question prefix computed once and its KV cache shared by
all options (batched), a naive per-option reference, and generation + answer-letter extraction for chat models."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qihuang.evaluate.mcq_formats import (FORMULATIONS, MCQItem, MCQSet, answer_text, build_prompt, format_question,
                                          shared_text)
from qihuang.evaluate.stats import accuracy, bootstrap_ci

LL_VARIANTS = ("ll", "ll_char", "ll_tok", "letter")


@dataclass
class OptionScores:
    """Log-likelihood (nats) of each option's answer text, its length in characters and tokens, and the
    log-probability of the option letter as the first token after `答案：`."""

    ll: list[float]
    chars: list[int]
    tokens: list[int]
    letter: list[float]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


@dataclass
class SharedPrefix:
    """Text common to every prompt of a file (instruction header, few-shot examples): its tokens and KV cache,
    computed once and reused by every batch."""

    ids: list[int]
    kv: list[tuple[Any, Any]]


def encode_shared(model: Any, tokenizer: Any, text: str) -> SharedPrefix | None:
    """Run `text` once and keep its KV cache (None for empty text)."""
    import torch

    ids = _ids(tokenizer, text) if text else []
    if not ids:
        return None
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return SharedPrefix(ids, [(layer.keys, layer.values) for layer in cache.layers])


def _cache_from(model: Any, shared: SharedPrefix | None, batch: int) -> Any:
    from transformers import DynamicCache

    if shared is None:
        return None
    return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1).contiguous(),
                                         v.expand(batch, -1, -1, -1).contiguous()) for k, v in shared.kv],
                        config=model.config)


def _tree_rows(p_ids: list[list[int]], c_ids: list[list[list[int]]], letters_only: bool
               ) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Per question: its packed tokens (prompt, then every option but its last token), the segment of each token
    (0 = prompt, j + 1 = option j) and each token's position after the prompt start."""
    toks, segs, offs = [], [], []
    for p, conts in zip(p_ids, c_ids):
        row, seg, off = list(p), [0] * len(p), list(range(len(p)))
        if not letters_only:
            for j, c in enumerate(conts):
                row += c[:-1]
                seg += [j + 1] * (len(c) - 1)
                off += range(len(p), len(p) + len(c) - 1)
        toks.append(row)
        segs.append(seg)
        offs.append(off)
    return toks, segs, offs


def score_options_batch(model: Any, tokenizer: Any, prefixes: list[str], continuations: list[list[str]],
                        shared: SharedPrefix | None = None, letters_only: bool = False) -> list[OptionScores]:
    """Score several questions at once in ONE forward, each question's prompt shared by all its options.

    The token sequence of option j of question i is `shared.ids + ids(prefixes[i]) + ids(continuations[i][j])`.
    Each batch row packs a question's prompt followed by all of its options (tree attention): a 4D mask lets every
    option token see the shared cache, the prompt and the earlier tokens of its own option only, and position ids
    restart after the prompt for each option, so each option is scored exactly as if it followed the prompt alone.
    Rows are right-padded (pads come after every real token, so no real token sees them). The LM head runs only on
    the positions that predict an option token. `letters_only` packs no options: only the first token of each
    continuation (the option letter) is scored, and `ll` then holds that letter score.
    """
    import torch

    p_ids = [_ids(tokenizer, p) for p in prefixes]
    c_ids = [[_ids(tokenizer, c) for c in conts] for conts in continuations]
    if any(not p for p in p_ids) or any(not c for conts in c_ids for c in conts):
        raise ValueError("empty prompt or continuation")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_shared = len(shared.ids) if shared else 0
    toks, segs, offs = _tree_rows(p_ids, c_ids, letters_only)
    b, width = len(toks), max(len(t) for t in toks)
    inp = torch.full((b, width), pad, dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    for i, (t, s, o) in enumerate(zip(toks, segs, offs)):
        inp[i, : len(t)] = torch.tensor(t)
        seg[i, : len(s)] = torch.tensor(s)
        pos[i, : len(o)] = torch.tensor(o) + n_shared
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    tree = causal[None] & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))  # [b, query, key]
    mask = torch.cat([torch.ones((b, width, n_shared), dtype=torch.bool), tree], dim=2)[:, None]
    # where each option token is predicted from: the prompt's last position, then the option's own positions
    rows_b, rows_t, targets, owner = [], [], [], []
    for i, (p, conts) in enumerate(zip(p_ids, c_ids)):
        start = len(p)
        for j, c in enumerate(conts):
            upto = 1 if letters_only else len(c)
            rows_b += [i] * upto
            rows_t += [len(p) - 1] + list(range(start, start + upto - 1))
            targets += c[:upto]
            owner += [(i, j, True)] + [(i, j, False)] * (upto - 1)  # the first scored token is the letter
            start += len(c) - 1
    m: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.inference_mode():
        hidden = m.get_decoder()(input_ids=inp, attention_mask=mask, position_ids=pos,
                                 cache=_cache_from(model, shared, b), use_cache=shared is not None
                                 ).last_hidden_state
        logits = m.get_output_embeddings()(hidden[torch.tensor(rows_b), torch.tensor(rows_t)]).float()
        lps = (logits.gather(1, torch.tensor(targets)[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).tolist()
    ll = [[0.0] * len(conts) for conts in c_ids]
    letter = [[0.0] * len(conts) for conts in c_ids]
    for (i, j, first), lp in zip(owner, lps):
        ll[i][j] += lp
        if first:
            letter[i][j] = lp
    return [OptionScores(ll[q], [len(c) for c in conts], [len(c) for c in c_ids[q]], letter[q])
            for q, conts in enumerate(continuations)]


def score_options_naive(model: Any, tokenizer: Any, prefix: str, continuations: list[str],
                        shared_text: str = "") -> OptionScores:
    """Reference: one full forward of (shared text +) prompt + continuation per option (no sharing, no batching);
    tokens as in `score_options_batch`."""
    import torch

    p_ids = (_ids(tokenizer, shared_text) if shared_text else []) + _ids(tokenizer, prefix)
    ll, toks, letter = [], [], []
    for cont in continuations:
        c = _ids(tokenizer, cont)
        ids = torch.tensor([p_ids + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
        pos = torch.arange(len(p_ids) - 1, len(p_ids) + len(c) - 1)
        lps = logp[pos, torch.tensor(c)]
        ll.append(float(lps.sum()))
        letter.append(float(lps[0]))
        toks.append(len(c))
    return OptionScores(ll, [len(c) for c in continuations], toks, letter)


def pick(scores: OptionScores, letters: list[str]) -> dict[str, str]:
    """The option chosen by each log-likelihood variant."""
    def best(values: list[float]) -> str:
        return letters[max(range(len(values)), key=values.__getitem__)]

    return {
        "ll": best(scores.ll),
        "ll_char": best([v / max(c, 1) for v, c in zip(scores.ll, scores.chars)]),
        "ll_tok": best([v / max(t, 1) for v, t in zip(scores.ll, scores.tokens)]),
        "letter": best(scores.letter),
    }


def extract_letter(text: str, item: MCQItem) -> str | None:
    """The option letter a generated answer names: `答案是B` / a lone letter / the text of exactly one option."""
    letters = "".join(item.options)
    for pattern in (rf"答案\s*(?:是|为|：|:)?\s*([{letters}])", rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    hits = [k for k, v in item.options.items() if v and v in text]
    return hits[0] if len(hits) == 1 else None


def generate_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy chat completion of `prompt` as one user turn (plain text when there is no chat template)."""
    import torch

    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    from qihuang.tokenizer import suppressed_ids

    ids = torch.tensor([_ids(tokenizer, text)])
    suppress = list(suppressed_ids(tokenizer))  # an extended vocabulary's untrained byte fragments (U+FFFD)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id if tokenizer.pad_token_id is None
                             else tokenizer.pad_token_id, suppress_tokens=suppress or None)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def evaluate_mcq_set(model: Any, tokenizer: Any, data: MCQSet, *, examples: list[MCQItem] | None = None,
                     scoring: str = "loglik", metric: str = "ll_char", formulation: str = "mcf",
                     gen_max_new_tokens: int = 16,
                     n_boot: int = 1000, seed: int = 0, batch_size: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Score every item of `data`; returns (summary, per-item predictions).

    `scoring`: "loglik" (all log-likelihood variants), "letter" (only the answer letter's probability: one forward
    per batch, cheapest), "generate" or "both" (loglik + generate); `metric` is the variant reported as
    `accuracy` (falls back to the first available one). `formulation` ("mcf" or "cf", see
    `mcq_formats.FORMULATIONS`) shapes the log-likelihood prompts; letter scoring and generation always list the
    options (mcf). In cf the option letter is not scored, so there is no "letter" variant.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation {formulation!r}: expected one of {FORMULATIONS}")
    cloze = formulation == "cf" and scoring in ("loglik", "both")
    t0 = time.time()
    preds: list[dict[str, Any]] = [{"row": it.row, "category": it.category, "answer": it.answer, "pred": {}}
                                   for it in data.items]
    prompts = [build_prompt(it, examples) for it in data.items]
    if scoring in ("loglik", "both", "letter"):
        shared = encode_shared(model, tokenizer, shared_text(examples, cloze))  # header + shots: once per file
        own = [format_question(it, cloze) for it in data.items]
        order = sorted(range(len(own)), key=lambda i: len(own[i]))  # similar lengths batched: little padding
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            scores = score_options_batch(model, tokenizer, [own[i] for i in idx],
                                         [[answer_text(data.items[i], k, cloze) for k in data.items[i].options]
                                          for i in idx], shared, letters_only=scoring == "letter")
            for i, sc in zip(idx, scores):
                chosen = pick(sc, list(data.items[i].options))
                if cloze:
                    chosen.pop("letter")
                preds[i]["pred"].update({"letter": chosen["letter"]} if scoring == "letter" else chosen)
                preds[i]["ll"] = [round(v, 4) for v in sc.ll]
            if progress:
                progress(start + len(idx), len(data.items))
    if scoring in ("generate", "both"):
        for i, (it, prompt) in enumerate(zip(data.items, prompts)):
            text = generate_answer(model, tokenizer, prompt[: -len("答案：")] + "请只回答正确选项的字母。",
                                   gen_max_new_tokens)
            preds[i]["pred"]["generate"] = extract_letter(text, it)
            preds[i]["generated"] = text
            if progress:
                progress(i + 1, len(data.items))
    seconds = time.time() - t0
    variants = [v for v in (*LL_VARIANTS, "generate") if v in preds[0]["pred"]]
    correct = {v: [p["pred"][v] == p["answer"] for p in preds] for v in variants}
    primary = metric if metric in correct else variants[0]
    acc = accuracy(correct[primary])
    lo, hi = bootstrap_ci(correct[primary], n_boot, seed)
    cats: dict[str, list[bool]] = {}
    for p, ok in zip(preds, correct[primary]):
        cats.setdefault(p["category"], []).append(ok)
    summary: dict[str, Any] = {
        "accuracy": acc,
        "ci95": [lo, hi],
        "metric": primary,
        "n": len(preds),
        "chance": sum(1 / len(it.options) for it in data.items) / len(data.items),
        "variants": {v: accuracy(c) for v, c in correct.items()},
        "by_category": {k: {"accuracy": accuracy(v), "n": len(v)} for k, v in sorted(cats.items())},
        "skipped": len(data.skipped),
        "skipped_rows": [s["row"] for s in data.skipped],
        "skipped_reasons": _reason_counts(data.skipped),
        "total_rows": data.total_rows,
        "format": data.format,
        "shots": len(examples or []),
        "scoring": scoring,
        "formulation": "cf" if cloze else "mcf",
        "questions_per_s": len(preds) / max(seconds, 1e-9),
        "seconds": round(seconds, 2),
    }
    if "generate" in correct:
        summary["unparsed"] = sum(p["pred"]["generate"] is None for p in preds)
    return summary, preds


def _reason_counts(skipped: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return counts


__all__ = ["LL_VARIANTS", "OptionScores", "evaluate_mcq_set", "extract_letter", "pick",
           "score_options_naive"]
