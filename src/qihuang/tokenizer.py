"""Vocabulary extension (#4): add the Chinese characters (and optionally lexicon words) the base tokenizer splits,
resize embeddings and LM head, initialising each new row from the mean of the rows of its old pieces (rescaled to
their norm).

New entries are added as (non-special) added tokens of the tokenizers backend, so the same path works for
byte-level BPE (SmolLM2) and SentencePiece (LLaMA-1/Ziya) tokenizers: they are matched before the pre-tokenizer,
decode to their own text, and leave special tokens and the chat template untouched.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qihuang.cliutil import config_options, model_passages_options, run_stage_command
from qihuang.config import ConfigError, check_ranges
from qihuang.runs import StageDir

EXTENSION_FILE = "qihuang_extension.json"


class TokenizerExtensionError(RuntimeError):
    """The base tokenizer cannot be extended (the message names the model directory and why)."""


@dataclass
class TokenizerConfig:
    """How to extend the base tokenizer."""

    enabled: bool = True
    """Extend the vocabulary (false: pass the base model through unchanged)."""
    coverage: float = 0.999
    """Consider the most frequent characters covering this fraction of the corpus' character occurrences."""
    max_added: int = 20000
    """At most this many new tokens (characters + words)."""
    min_count: int = 2
    """Ignore characters seen fewer times in the corpus."""
    cjk_only: bool = True
    """Only add CJK characters and CJK punctuation (not Latin, digits, symbols)."""
    words_file: Path | None = None
    """Lexicon (one term per line, jieba style: first column) of multi-character words to consider, e.g.
    lexicon/tcm_terms_62k.txt; none: characters only."""
    max_words: int = 0
    """Add at most this many lexicon words (most frequent in the corpus first)."""
    min_word_count: int = 50
    """Ignore lexicon words seen fewer times in the corpus."""
    max_corpus_chars: int | None = 30_000_000
    """Count characters in at most this many characters of training text."""
    heldout_chars: int = 300_000
    """Characters of held-out text used for tokens/char and coverage."""
    rescale_new_rows: bool = True
    """Rescale each new input row (the mean of its pieces' rows, shorter than they are: 2.3 vs 3.2 on smollm2) to
    its pieces' mean norm. Short rows make continual pretraining unstable: RMSNorm scales their gradients by
    1/norm, and the first layer's norm/value weights and the embeddings then take gradient spikes (norms 40-250
    where others are ~4). With tied embeddings the row's component along the mean final hidden state is kept, so
    its starting logits barely move."""
    seed: int = 0
    """Seed (kept for the pipeline; the extension itself is deterministic)."""

    def __post_init__(self) -> None:
        if not 0 < self.coverage <= 1:
            raise ConfigError("tokenizer.coverage must be in (0, 1]")
        if self.max_added < 0 or self.max_words < 0 or self.min_count < 1:
            raise ConfigError("tokenizer: max_added >= 0, max_words >= 0 and min_count >= 1 are required")
        if self.max_words > 0 and self.words_file is None:
            raise ConfigError("tokenizer.max_words > 0 needs tokenizer.words_file")
        check_ranges("tokenizer", self, min_word_count=(1, None, False), max_corpus_chars=(0, None, True),
                     heldout_chars=(0, None, False))


def fragment_token_ids(tokenizer: Any, min_added_chars: int = 100) -> list[int]:
    """Ids of vocabulary pieces that are not whole text: byte-level BPE pieces (or SentencePiece `<0xNN>` byte
    fallbacks) holding an incomplete UTF-8 character. Only for a tokenizer extended with characters (at least
    `min_added_chars` single-character added tokens), else []. After extension those pieces never occur in the
    tokenized training text of covered characters, so an extended model may still emit them but has not learnt to
    complete them: decoding then shows U+FFFD. Suppressing them at generation costs only characters outside the
    extension (0.1% of the corpus at the default coverage)."""
    added = [t for t in tokenizer.get_added_vocab() if len(t) == 1 and _is_cjk(t)]
    if len(added) < min_added_chars:
        return []
    out = []
    for tid, raw in enumerate(piece_bytes(tokenizer)):
        if raw is None:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append(tid)
    return out


def piece_bytes(tokenizer: Any) -> list[bytes | None]:
    """The UTF-8 bytes each vocabulary id stands for in running text (index = id; None for special tokens): byte-level
    BPE pieces through GPT-2's byte alphabet, SentencePiece `<0xNN>` byte fallbacks as that byte and `▁` as a space,
    added tokens as their text. A piece may hold part of a character (what `fragment_token_ids` and the verbatim
    quotes of `qihuang.quotes` work with)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    byte_level = "Ġ" in tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    added = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    out: list[bytes | None] = []
    for tid, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece is None or tid in special:
            out.append(None)
        elif tid in added:
            out.append(added[tid].encode("utf-8"))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        elif byte_level and all(ch in to_byte for ch in piece):
            out.append(bytes(to_byte[ch] for ch in piece))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


@functools.lru_cache(maxsize=8)
def suppressed_ids(tokenizer: Any) -> tuple[int, ...]:
    """`fragment_token_ids`, computed once per tokenizer object (for `generate(suppress_tokens=...)`)."""
    return tuple(fragment_token_ids(tokenizer))


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F
            or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or 0x2E80 <= o <= 0x2FDF)


def _texts(path: Path, max_chars: int | None) -> list[str]:
    from qihuang.training.bpc import take_chars
    from qihuang.training.data import read_texts

    return take_chars(read_texts(path), max_chars)


class _Pieces:
    """How the base tokenizer spells a string in running text (context-independent of a leading space)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.ctx = "。"
        self.ctx_ids = tok.encode(self.ctx, add_special_tokens=False)

    def __call__(self, s: str) -> list[int]:
        ids = self.tok.encode(self.ctx + s, add_special_tokens=False)
        n = len(self.ctx_ids)
        if ids[:n] == self.ctx_ids and len(ids) > n:
            return ids[n:]
        ids = self.tok.encode(s, add_special_tokens=False)
        if len(ids) > 1 and self.tok.convert_ids_to_tokens(ids[0]) in ("▁", "Ġ"):
            ids = ids[1:]
        return ids


def _choose_chars(counts: Counter[str], cfg: TokenizerConfig, pieces: _Pieces) -> tuple[list[str], int]:
    """Characters to add, most frequent first, and how many candidate characters were considered."""
    total = sum(counts.values())
    chosen: list[str] = []
    covered = 0
    considered = 0
    for ch, n in counts.most_common():
        if covered >= cfg.coverage * total or n < cfg.min_count:
            break
        covered += n
        considered += 1
        if ch.isspace() or (cfg.cjk_only and not _is_cjk(ch)):
            continue
        if len(pieces(ch)) > 1:
            chosen.append(ch)
    return chosen, considered


def _count_words(texts: list[str], words_file: Path) -> Counter[str]:
    terms: set[str] = set()
    for line in Path(words_file).read_text(encoding="utf-8").splitlines():
        w = line.split()[0] if line.split() else ""
        if 2 <= len(w) <= 6 and all(_is_cjk(c) for c in w):
            terms.add(w)
    lengths = sorted({len(w) for w in terms})
    counts: Counter[str] = Counter()
    for text in texts:
        for i in range(len(text)):
            for n in lengths:
                w = text[i:i + n]
                if w in terms:
                    counts[w] += 1
    return counts


def _tokens_per_char(tok: Any, texts: list[str]) -> float:
    chars = sum(len(t) for t in texts)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / max(chars, 1)


def _single_token_coverage(tok: Any, counts: Counter[str]) -> float:
    """Fraction of character occurrences the tokenizer spells with one token."""
    pieces = _Pieces(tok)
    total = sum(counts.values())
    single = sum(n for ch, n in counts.items() if len(pieces(ch)) == 1)
    return single / max(total, 1)


def _rescale_new_rows(model: Any, rows: list[int], pieces: list[list[int]], sample: list[int], tied: bool) -> None:
    """Scale each new input row to the mean norm of its pieces' rows (see TokenizerConfig.rescale_new_rows); with
    tied embeddings only the part orthogonal to the mean final hidden state over `sample` (token ids) is scaled."""
    import torch

    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        idx = torch.tensor(rows)
        target = torch.stack([emb[torch.tensor(p)].norm(dim=1).mean() for p in pieces])
        e = emb[idx]
        if not tied or not sample:
            emb[idx] = e * (target / e.norm(dim=1).clamp(min=1e-8))[:, None]
            return
        h = torch.cat([model.base_model(input_ids=torch.tensor([sample[i:i + 512]])).last_hidden_state[0]
                       for i in range(0, len(sample), 512)])
        mu = h.mean(0)
        mu = mu / mu.norm()
        along = e @ mu  # the part of the logit every position shares: kept
        ortho = e - along[:, None] * mu[None, :]
        scale = (target ** 2 - along ** 2).clamp(min=0).sqrt() / ortho.norm(dim=1).clamp(min=1e-8)
        emb[idx] = along[:, None] * mu[None, :] + ortho * scale[:, None]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def extend_tokenizer(cfg: TokenizerConfig, model_dir: Path, train: Path, heldout: Path, out: StageDir) -> dict[str, Any]:
    """Write the extended model into out.path/'model'; summary with tokens/char before/after and coverage."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qihuang.models import check_tokenizer_files
    from qihuang.runs import atomic_path, write_json

    t0 = time.time()
    model_dir = Path(model_dir)
    target = out.path / "model"
    held = _texts(heldout, cfg.heldout_chars)
    tok = AutoTokenizer.from_pretrained(str(check_tokenizer_files(model_dir)))
    before = _tokens_per_char(tok, held)
    if not cfg.enabled:
        with atomic_path(target) as tmp:
            shutil.copytree(model_dir, tmp, copy_function=_link_or_copy)
        return {"enabled": False, "added": 0, "tokens_per_char_before": round(before, 4),
                "tokens_per_char_after": round(before, 4), "vocab_before": len(tok), "vocab_after": len(tok)}
    if not hasattr(tok, "backend_tokenizer") or not hasattr(tok, "add_tokens"):
        raise TokenizerExtensionError(
            f"{model_dir}: tokenizer {type(tok).__name__} gives no access to its vocabulary (no tokenizers backend);"
            " convert it to a fast tokenizer (tokenizer.json) first")
    try:
        vocab = tok.get_vocab()
    except Exception as exc:
        raise TokenizerExtensionError(f"{model_dir}: cannot read the tokenizer's vocabulary ({exc})") from exc

    corpus = _texts(train, cfg.max_corpus_chars)
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(text)
    held_counts: Counter[str] = Counter()
    for text in held:
        held_counts.update(text)
    pieces = _Pieces(tok)
    chars, considered = _choose_chars(counts, cfg, pieces)
    chars = chars[:cfg.max_added]
    words: list[str] = []
    if cfg.words_file and cfg.max_words:
        wc = _count_words(corpus, cfg.words_file)
        budget = min(cfg.max_words, cfg.max_added - len(chars))
        words = [w for w, n in wc.most_common() if n >= cfg.min_word_count and w not in vocab][:max(budget, 0)]
    new = [s for s in chars + words if s not in vocab]
    spelled = {s: pieces(s) for s in new}

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    old_len = len(tok)
    added = tok.add_tokens([AddedToken(s, normalized=False, special=False, single_word=False) for s in new])
    new_len = len(tok)
    if added != len(new):
        raise TokenizerExtensionError(f"{model_dir}: asked to add {len(new)} tokens, tokenizer added {added}")
    emb_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(max(new_len, emb_rows), mean_resizing=False)
    inp = model.get_input_embeddings().weight
    outp = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    tied = outp is None or outp.data_ptr() == inp.data_ptr()
    new_ids = [tok.convert_tokens_to_ids(s) for s in new]
    with torch.no_grad():
        for s, nid in zip(new, new_ids):
            idx = torch.tensor(spelled[s])
            inp[nid] = inp[idx].mean(0)
            if not tied:
                outp[nid] = outp[idx].mean(0)
    if cfg.rescale_new_rows and new:
        sample = [t for text in corpus[:64] for t in tok(text, add_special_tokens=False)["input_ids"]][:2048]
        _rescale_new_rows(model.eval(), new_ids, [spelled[s] for s in new], sample, tied)
    after = _tokens_per_char(tok, held)
    ext = {"base_model": str(model_dir.resolve()), "base_vocab": old_len, "added_range": [old_len, new_len],
           "added_chars": len([s for s in new if len(s) == 1]), "added_words": len([s for s in new if len(s) > 1])}
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / EXTENSION_FILE).write_text(json.dumps(ext, ensure_ascii=False, indent=1), encoding="utf-8")
    write_json(out.path / "added_tokens.json", new)
    summary = {
        "enabled": True, "added": len(new), **{k: ext[k] for k in ("added_chars", "added_words")},
        "vocab_before": old_len, "vocab_after": new_len, "tied_embeddings": tied,
        "tokens_per_char_before": round(before, 4), "tokens_per_char_after": round(after, 4),
        "heldout_chars": sum(len(t) for t in held), "corpus_chars": sum(counts.values()),
        "distinct_chars": len(counts), "chars_considered": considered, "coverage_target": cfg.coverage,
        "coverage_train_before": round(_single_token_coverage(AutoTokenizer.from_pretrained(str(model_dir)),
                                                              counts), 5),
        "coverage_train_after": round(_single_token_coverage(tok, counts), 5),
        "coverage_heldout_after": round(_single_token_coverage(tok, held_counts), 5),
        "sample_added": new[:20], "seconds": round(time.time() - t0, 1),
    }
    return summary


@click.group("tokenizer")
def tokenizer_cli() -> None:
    """Vocabulary extension."""


@tokenizer_cli.command("extend")
@config_options(TokenizerConfig)
@model_passages_options("Base model: preset, HF directory or .gguf",
                        "Training passages (JSONL with `text`) whose characters are counted",
                        "Held-out passages for tokens/char")
def extend_cmd(cfg: TokenizerConfig, model_spec: str, train_path: Path, heldout_path: Path, out_path: Path,
               force: bool) -> None:
    """Add the corpus' split characters to the vocabulary; writes OUT/model (HF directory)."""
    from qihuang.models import prepare_model

    model_dir = prepare_model(model_spec)
    run_stage_command(out_path, cfg, lambda out: extend_tokenizer(cfg, model_dir, train_path, heldout_path, out),
                      force, hide=("sample_added",))
