"""What a better start for the new vocabulary rows is worth, without training the body: held-out bits/char of the
extended model under other initialisations of the new rows, and after fitting an untied LM head to full-corpus
bigram statistics on frozen hidden states.

    qihuang tokenizer extend --model smollm2-135m --train runs/demo/corpus/train.jsonl \
        --heldout runs/demo/corpus/heldout.jsonl --out /tmp/tok_mean --no-rescale-new-rows
    python benchmarks/extension_init_probe.py --model /tmp/tok_mean/model [--base smollm2-135m]
        [--train runs/demo/corpus/train.jsonl] [--heldout runs/demo/corpus/heldout.jsonl]

`--model` must hold plain mean-of-pieces rows (`mean`: each new row = mean of the rows of its old pieces; the
default extension since session 3 also rescales them, see TokenizerConfig.rescale_new_rows). Variants:
- `logit_tied`: row = first piece + b·u, where b is the base model's mean log-probability of the remaining pieces
  given the first (measured in running text) and u is the ridge direction with u·h ≈ 1 over final hidden states h
  (they are strongly anisotropic), so that the new token's logit ≈ the base model's log-probability of its spelling.
- `logit_untied[β]`: the same rows in an untied LM head only (inputs keep `mean`); byte fragments lowered by β·u.
- `head_fit`: untied LM head rows of the corpus' tokens fitted (Adam, cross-entropy against a Witten-Bell bigram
  over all training tokens) on the final hidden states of `--head-positions` training tokens; body untouched.
Prints `PROBE <variant> bpc=<x>` lines (2,000 held-out characters, the pretrain stage's round-robin selection), then
`RESULT extension_init_probe <best variant's bpc> bpc baseline=<mean's bpc> ratio=<best / mean> (<variant> ...)`.

    python benchmarks/extension_init_probe.py --smoke   # tiny random model extended on 4 shared books (CI)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from _inputs import smoke_corpus

from qihuang.models import prepare_model
from qihuang.pretrain import _heldout_texts
from qihuang.tokenizer import _Pieces, fragment_token_ids
from qihuang.training.bpc import bits_per_char
from qihuang.training.data import read_texts


def continuation_logprobs(base: Any, tok: Any, chars: list[str], texts: list[str]) -> dict[str, float]:
    """Mean log p(pieces 2..k | context, piece 1) of each character under the base model: in running text where
    seen, else with a '。' context plus the mean running-text minus context-free gap."""
    pieces = _Pieces(tok)
    spell = {c: pieces(c) for c in chars}
    ctx = tok.encode("。", add_special_tokens=False)
    free: dict[str, float] = {}
    with torch.no_grad():
        for k in sorted({len(v) for v in spell.values()}):
            group = [c for c in chars if len(spell[c]) == k]
            for i in range(0, len(group), 256):
                batch = group[i:i + 256]
                lp = base(input_ids=torch.tensor([ctx + spell[c] for c in batch])).logits.log_softmax(-1)
                for row, c in enumerate(batch):
                    free[c] = sum(float(lp[row, len(ctx) + j - 1, spell[c][j]]) for j in range(1, k))
        seen: dict[str, list[float]] = {}
        for text in texts:
            enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
            ids = [tok.bos_token_id if tok.bos_token_id is not None else 0] + enc.input_ids
            lp = base(input_ids=torch.tensor([ids[:1024]])).logits[0].log_softmax(-1)
            offs, i = enc.offset_mapping[:1023], 0
            while i < len(offs):
                j = i
                while j + 1 < len(offs) and offs[j + 1] == offs[i]:
                    j += 1
                ch = text[offs[i][0]:offs[i][1]]
                if ch in spell and enc.input_ids[i:j + 1] == spell[ch] and j > i:
                    seen.setdefault(ch, []).append(sum(float(lp[k, enc.input_ids[k]]) for k in range(i + 1, j + 1)))
                i = j + 1
    means = {c: sum(v) / len(v) for c, v in seen.items()}
    gap = sum(means[c] - free[c] for c in means) / max(len(means), 1)
    return {c: means.get(c, free[c] + gap) for c in chars}


def hidden(model: Any, seqs: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])


def bias_direction(h: torch.Tensor, ridge: float = 100.0) -> torch.Tensor:
    """u minimising ||h u - 1||² + ridge·||u||²: adding b·u to an output row adds ≈ b to its logit."""
    a = h.T @ h + ridge * torch.eye(h.shape[1])
    return torch.linalg.solve(a, h.T @ torch.ones(h.shape[0]))


def untie(model: Any) -> torch.Tensor:
    w = model.get_input_embeddings().weight.detach().clone()
    head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    head.weight.data.copy_(w)
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return head.weight.data


def head_fit(model: Any, tok: Any, train_ids: list[list[int]], positions: int, epochs: int, lr: float) -> None:
    """Fit the untied head rows of the tokens seen in training to Witten-Bell bigram targets."""
    ctx = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    uni: Counter[int] = Counter()
    bi: Counter[tuple[int, int]] = Counter()
    for ids in train_ids:
        s = [ctx] + ids
        uni.update(ids)
        bi.update(zip(s, s[1:]))
    active = sorted(set(uni) | {ctx})
    pos = {t: i for i, t in enumerate(active)}
    n = len(active)
    cu = torch.zeros(n)
    for t, c in uni.items():
        cu[pos[t]] = c
    p_uni = (cu + 0.5) / (cu.sum() + 0.5 * n)
    counts = torch.zeros(n, n)
    for (a, b), c in bi.items():
        counts[pos[a], pos[b]] += c
    ctx_n, types = counts.sum(1), (counts > 0).sum(1).float()
    lam = ctx_n / (ctx_n + types).clamp(min=1)
    bigram = lam[:, None] * counts / ctx_n.clamp(min=1)[:, None] + (1 - lam)[:, None] * p_uni[None, :]
    order = list(range(len(train_ids)))
    random.Random(0).shuffle(order)
    seqs, xs, total = [], [], 0
    for i in order:
        s = ([ctx] + train_ids[i])[:256]
        if len(s) >= 8:
            seqs.append(s)
            xs += s
            total += len(s)
        if total >= positions:
            break
    h = hidden(model, seqs)
    x = torch.tensor([pos[t] for t in xs])
    w = untie(model)
    act = torch.tensor(active)
    rest = torch.tensor(sorted(set(range(w.shape[0])) - set(active)))
    with torch.no_grad():
        z_rest = torch.cat([torch.logsumexp(h[i:i + 2048] @ w[rest].T, -1) for i in range(0, len(h), 2048)])
    rows = torch.nn.Parameter(w[act].clone())
    opt = torch.optim.Adam([rows], lr=lr)
    for _ in range(epochs):
        for j in torch.randperm(len(h)).split(1024):
            logits = h[j] @ rows.T
            logp = logits - torch.logaddexp(torch.logsumexp(logits, -1), z_rest[j])[:, None]
            loss = -(bigram[x[j]] * logp).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w[act] = rows.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="extended with --no-rescale-new-rows (required unless --smoke)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--train", default="runs/demo/corpus/train.jsonl")
    ap.add_argument("--heldout", default="runs/demo/corpus/heldout.jsonl")
    ap.add_argument("--eval-chars", type=int, default=2000)
    ap.add_argument("--context-chars", type=int, default=10000, help="running text for continuation log-probs")
    ap.add_argument("--head-positions", type=int, default=10000)
    ap.add_argument("--head-epochs", type=int, default=30)
    ap.add_argument("--head-lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model extended on 4 shared books, small samples, 1 thread (CI)")
    a = ap.parse_args()
    if a.model is None and not a.smoke:
        ap.error("--model is required (or --smoke)")
    torch.set_num_threads(1 if a.smoke else a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="qh-ext-probe-") as tmp:
        if a.smoke:
            smoke_inputs(a, Path(tmp))
        bpc = probe(a)
    best = min((k for k in bpc if k not in ("base", "mean")), key=bpc.__getitem__)
    print(f"RESULT extension_init_probe {bpc[best]:.3f} bpc baseline={bpc['mean']:.3f} "
          f"ratio={bpc[best] / bpc['mean']:.3f} ({best} vs mean rows)")


def smoke_inputs(a: argparse.Namespace, tmp: Path) -> None:
    """--smoke: tiny-llama extended (400 new tokens, plain mean rows) on the 4-book smoke corpus; small samples."""
    from qihuang.runs import StageDir
    from qihuang.tokenizer import TokenizerConfig, extend_tokenizer

    corpus = smoke_corpus(tmp)
    a.base, a.train, a.heldout = "tiny-llama", str(corpus / "train.jsonl"), str(corpus / "heldout.jsonl")
    extend_tokenizer(TokenizerConfig(rescale_new_rows=False, max_added=400), prepare_model(a.base), Path(a.train),
                     Path(a.heldout), StageDir(tmp / "tokenizer"))
    a.model = str(tmp / "tokenizer" / "model")
    a.eval_chars, a.context_chars, a.head_positions, a.head_epochs = 300, 1000, 1000, 2


def probe(a: argparse.Namespace) -> dict[str, float]:
    """Print a PROBE line per variant; their held-out bits/char by name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held = _heldout_texts(Path(a.heldout), a.eval_chars)
    base_dir = prepare_model(a.base)
    tok_b, tok = AutoTokenizer.from_pretrained(str(base_dir)), AutoTokenizer.from_pretrained(a.model)

    def load(path: str | Path) -> Any:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    bpc: dict[str, float] = {}

    def report(name: str, model: Any, t: Any, t0: float) -> None:
        bpc[name] = bits_per_char(model, t, held)["bpc"]
        print(f"PROBE {name} bpc={bpc[name]:.3f} seconds={time.time() - t0:.0f}", flush=True)

    base = load(base_dir)
    report("base", base, tok_b, time.time())
    model = load(a.model)
    report("mean", model, tok, time.time())
    t0 = time.time()
    new = [t for t in tok.get_added_vocab() if len(t) == 1 and tok.convert_tokens_to_ids(t) >= len(tok_b)]
    train_texts = read_texts(Path(a.train))
    texts = list(train_texts)
    random.Random(0).shuffle(texts)
    sample, n = [], 0
    for text in texts:
        sample.append(text[:400])
        n += len(sample[-1])
        if n >= a.context_chars:
            break
    cont = continuation_logprobs(base, tok_b, new, sample)
    del base
    u = bias_direction(hidden(model, [tok(s, add_special_tokens=False).input_ids[:512] for s in sample]))
    pieces = _Pieces(tok_b)
    ids = {c: tok.convert_tokens_to_ids(c) for c in new}
    emb = model.get_input_embeddings().weight.data
    mean_rows = emb.clone()
    logit_rows = {c: mean_rows[pieces(c)[0]] + cont[c] * u for c in new}
    for c in new:
        emb[ids[c]] = logit_rows[c]
    report("logit_tied", model, tok, t0)
    emb.copy_(mean_rows)
    frags = fragment_token_ids(tok)
    for beta in (0.0, 3.0, 10.0):
        w = untie(model)
        for c in new:
            w[ids[c]] = logit_rows[c]
        w[frags] -= beta * u
        report(f"logit_untied[{beta:g}]", model, tok, t0)
    model = load(a.model)
    t0 = time.time()
    head_fit(model, tok, tok(train_texts, add_special_tokens=False)["input_ids"], a.head_positions,
             a.head_epochs, a.head_lr)
    report("head_fit", model, tok, t0)
    return bpc


if __name__ == "__main__":
    main()
