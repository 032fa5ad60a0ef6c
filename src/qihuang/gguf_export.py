"""GGUF export for llama.cpp (#6, #14): a LLaMA-architecture HF model folder → one GGUF file, and a read-back check.

The vocabulary is written the way llama.cpp's `convert_hf_to_gguf.py` writes it, per tokenizer kind:

- byte-level BPE (SmolLM2, Qwen, LLaMA-3): tokenizer model "gpt2", the HF tokens, the merges and a pre-tokenizer
  name that tells llama.cpp how to split text before merging;
- SentencePiece (LLaMA-1/2, Ziya, Chinese-LLaMA): tokenizer model "llama", the pieces as spelled ("▁" for a space,
  `<0xXX>` byte-fallback pieces), their scores (the merge priority of llama.cpp's SentencePiece tokenizer; transformers'
  GGUF loader rebuilds the merges from them too) and token types (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE).
  Scores come from `tokenizer.model` (read by `gguf.SentencePieceVocab`) when it is there and agrees with the HF
  vocabulary; otherwise (transformers ≥ 5 saves only `tokenizer.json`) from the merge order in `tokenizer.json`:
  a piece scores minus the rank of the first merge that makes it, which orders merges exactly as the file does.

Special token ids, merges (BPE) and the chat template come from `gguf.SpecialVocab`; the add-BOS/add-EOS flags are set
from what the tokenizer actually does. `verify_gguf` loads the file back with transformers (`gguf_file=`) and compares
tokenization and logits with the source model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.merge import PROBE, MergeError, compare_logits, probe_logits
from qihuang.runs import atomic_path

SPM, BPE = "llama", "gpt2"  # llama.cpp's names for the two tokenizer models
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType values
ADDED_SCORE, PAD_SCORE = -1000.0, -10000.0  # as llama.cpp's converter scores added and padding entries
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Split regexes of byte-level BPE pre-tokenizers (Qwen2: one digit at a time; LLaMA-3: up to three) → llama.cpp's names.
_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_PRE_BY_REGEX = {_SPLIT % "": "qwen2", _SPLIT % "{1,3}": "llama-bpe"}
VERIFY_TEXTS = ("黄帝问曰：余闻上古之人，春秋皆度百岁。", "Hello, world! 123", " leading space", "岐黄之术 Qibo's art 龘",
                "阴阳者，天地之道也。\nYin and yang:\n\n  两 spaces")


@dataclass
class GGUFVocab:
    """The tokenizer entries of a GGUF file (`tokenizer.ggml.*`)."""

    model: str
    """"gpt2" (byte-level BPE) or "llama" (SentencePiece)."""
    pre: str
    """llama.cpp's pre-tokenizer name."""
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    """SentencePiece only: merge priority, higher first."""
    source: str = "tokenizer.json"
    """Where tokens and scores were read: tokenizer.json or tokenizer.model."""
    add_space_prefix: bool | None = None


def _tokenizer_json(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / "tokenizer.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _components(part: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A normalizer/pre-tokenizer and the members of a `Sequence`, flattened."""
    if not part:
        return []
    if part.get("type") != "Sequence":
        return [part]
    members = part.get("pretokenizers") or part.get("normalizers") or []
    return [c for m in members for c in _components(m)]


def tokenizer_kind(model_dir: Path) -> str:
    """"llama" for a SentencePiece-style tokenizer (a `tokenizer.model` only, a Unigram model, or BPE with byte fallback
    or "▁" spaces), "gpt2" for byte-level BPE."""
    spec = _tokenizer_json(model_dir)
    if spec is None:
        if (model_dir / "tokenizer.model").exists():
            return SPM
        if (model_dir / "merges.txt").exists():
            return BPE
        raise MergeError(f"{model_dir}: no tokenizer.json, tokenizer.model or merges.txt")
    model = spec.get("model", {})
    parts = _components(spec.get("normalizer")) + _components(spec.get("pre_tokenizer"))
    if model.get("type") == "Unigram":
        return SPM
    if any(p.get("type") == "ByteLevel" for p in parts):
        return BPE
    if model.get("type") == "BPE" and (model.get("byte_fallback") or any("▁" in json.dumps(p) for p in parts)):
        return SPM
    raise MergeError(f"{model_dir}: unsupported tokenizer ({model.get('type')} without byte-level or ▁ spaces)")


def _bpe_pre_name(spec: dict[str, Any] | None, tok: Any) -> str:
    """llama.cpp's name for how a byte-level BPE splits text before merging."""
    parts = _components((spec or {}).get("pre_tokenizer"))
    for p in parts:
        name = _PRE_BY_REGEX.get((p.get("pattern") or {}).get("Regex", "")) if p.get("type") == "Split" else None
        if name:
            return name
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"
    if len(tok) >= 49152 and "Ġ" in tok.get_vocab():
        return "smollm"  # SmolLM2 folders prepared from its GGUF lost the Digits step
    if [p.get("type") for p in parts] == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    return "default"


def _added_type(token: Any) -> int:
    return CONTROL if token.special else USER_DEFINED


def _bpe_vocab(model_dir: Path, tok: Any) -> GGUFVocab:
    added = tok.added_tokens_decoder
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    types = [_added_type(added[i]) if i in added else NORMAL for i in range(len(tokens))]
    return GGUFVocab(BPE, _bpe_pre_name(_tokenizer_json(model_dir), tok), tokens, types)


def _merge_scores(model: dict[str, Any], tokens: list[str]) -> list[float]:
    """Scores that order merges as the BPE's merge list does: minus the rank of the first merge making the piece;
    pieces no merge makes (characters, bytes, specials) score below all of them."""
    rank: dict[str, int] = {}
    merges = model.get("merges") or []
    for i, m in enumerate(merges):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(left + right, i)
    return [-float(rank[t]) if t in rank else -float(len(merges) + i) for i, t in enumerate(tokens)]


def _spm_from_model_file(model_dir: Path, tok: Any) -> tuple[list[str], list[float], list[int]] | None:
    """Pieces, scores and types of `tokenizer.model` via `gguf.SentencePieceVocab`; None when there is none or it
    does not spell the HF vocabulary (e.g. a stale file left beside an edited tokenizer.json)."""
    import gguf

    if not (model_dir / "tokenizer.model").exists():
        return None
    try:
        entries = list(gguf.SentencePieceVocab(model_dir).sentencepiece_tokens())
    except (ValueError, RuntimeError, OSError):
        return None
    tokens = [text.decode("utf-8") for text, _, _ in entries]
    if tokens != tok.convert_ids_to_tokens(list(range(len(tokens)))):
        return None
    return tokens, [float(score) for _, score, _ in entries], [int(t) for _, _, t in entries]


def _spm_from_tokenizer_json(spec: dict[str, Any], unk: str | None) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and types of a SentencePiece-style `tokenizer.json` model (Unigram scores as stored, BPE scores
    from the merge order); `unk` is the tokenizer's unknown token when the model does not name one."""
    model = spec["model"]
    if model["type"] == "Unigram":
        tokens, scores = [str(p) for p, _ in model["vocab"]], [float(s) for _, s in model["vocab"]]
        unk = tokens[model["unk_id"]] if model.get("unk_id") is not None else unk
    else:
        by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise MergeError("tokenizer.json: BPE vocabulary ids are not contiguous")
        tokens = [t for t, _ in by_id]
        scores, unk = _merge_scores(model, tokens), model.get("unk_token") or unk
    types = [UNKNOWN if t == unk else BYTE if _BYTE_PIECE.fullmatch(t) else NORMAL for t in tokens]
    return tokens, scores, types


def _overlay_added(tokens: list[str], scores: list[float], types: list[int], tok: Any) -> None:
    """The HF added tokens over the base pieces, as llama.cpp's converter does: specials CONTROL, others USER_DEFINED
    (spelled with real spaces), both scored ADDED_SCORE; ids past the base vocabulary are appended."""
    for i, added in sorted(tok.added_tokens_decoder.items()):
        while len(tokens) <= i:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(PAD_SCORE)
            types.append(UNUSED)
        if types[i] == UNKNOWN:
            continue
        types[i] = _added_type(added)
        tokens[i] = added.content if added.special else added.content.replace("▁", " ")
        scores[i] = ADDED_SCORE


def _space_prefix(spec: dict[str, Any] | None) -> bool:
    """Whether the tokenizer puts a "▁" before the text (Metaspace prepend, or a Prepend normalizer)."""
    parts = _components((spec or {}).get("normalizer")) + _components((spec or {}).get("pre_tokenizer"))
    for p in parts:
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
        if p.get("type") == "Prepend":
            return True
    return spec is None  # a bare tokenizer.model: SentencePiece's add_dummy_prefix default


def _spm_vocab(model_dir: Path, tok: Any) -> GGUFVocab:
    spec = _tokenizer_json(model_dir)
    base = _spm_from_model_file(model_dir, tok)
    source = "tokenizer.model"
    if base is None:
        if spec is None:
            raise MergeError(f"{model_dir}: tokenizer.model does not spell the tokenizer's vocabulary, no tokenizer.json")
        base, source = _spm_from_tokenizer_json(spec, tok.unk_token), "tokenizer.json"
    tokens, scores, types = (list(x) for x in base)
    _overlay_added(tokens, scores, types, tok)
    return GGUFVocab(SPM, "default", tokens, types, scores, source, _space_prefix(spec))


def build_vocab(model_dir: Path, tok: Any, n_vocab: int) -> GGUFVocab:
    """The GGUF vocabulary of the model folder's tokenizer, padded with UNUSED `[PADn]` entries to `n_vocab`."""
    vocab = _spm_vocab(model_dir, tok) if tokenizer_kind(model_dir) == SPM else _bpe_vocab(model_dir, tok)
    if len(vocab.tokens) > n_vocab:
        raise MergeError(f"{model_dir}: tokenizer has {len(vocab.tokens)} tokens, the model only {n_vocab} rows")
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(PAD_SCORE)
    return vocab


def add_special_flags(tok: Any) -> dict[str, bool]:
    """Whether the tokenizer adds BOS / EOS around plain text (what llama.cpp's add_bos/add_eos flags mean)."""
    plain = list(tok("a", add_special_tokens=False)["input_ids"])
    full = list(tok("a")["input_ids"])
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return {"bos": bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos],
            "eos": eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]}


def _write_vocab(w: Any, vocab: GGUFVocab, model_dir: Path, tok: Any) -> None:
    import gguf

    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    special = gguf.SpecialVocab(str(model_dir), load_merges=vocab.model == BPE, n_vocab=len(vocab.tokens))
    special.add_special_token.update(add_special_flags(tok))
    special.add_to_gguf(w, quiet=True)


def _write_metadata(w: Any, cfg: Any, name: str, outtype: str) -> None:
    import gguf

    n_head = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(rope))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)


def _permute(w: Any, n_head: int) -> Any:
    """HF rotate-half q/k layout → the interleaved layout llama.cpp expects (as its converter does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tensors(w: Any, model: Any, outtype: str) -> int:
    """Add every weight under its GGUF name (q/k permuted; f16 for matrices when asked); return how many."""
    import gguf
    import numpy as np

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    n = 0
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise MergeError(f"no GGUF name for tensor {name}")
        data = t.detach().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        data = data.astype(np.float16 if outtype == "f16" and data.ndim > 1 else np.float32)
        w.add_tensor(gname, np.ascontiguousarray(data))
        n += 1
    return n


def export_gguf(model_dir: Path, target: Path, outtype: str = "f16") -> dict[str, Any]:
    """Write a LLaMA-architecture HF model (weights, tokenizer, chat template) as a GGUF file for llama.cpp."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg, tok = model.config, AutoTokenizer.from_pretrained(str(model_dir))
    if cfg.model_type != "llama":
        raise MergeError(f"{model_dir}: GGUF export supports LLaMA-architecture models, got {cfg.model_type}")
    vocab = build_vocab(model_dir, tok, cfg.vocab_size)
    with atomic_path(Path(target)) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _write_metadata(w, cfg, model_dir.name, outtype)
        _write_vocab(w, vocab, model_dir, tok)
        n = _write_tensors(w, model, outtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"tensors": n, "bytes": Path(target).stat().st_size, "outtype": outtype, "tokenizer_model": vocab.model,
            "tokenizer_pre": vocab.pre, "vocab_source": vocab.source}


def _field_str(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    return bytes(field.parts[-1]).decode() if field is not None else None


def _gguf_vocab(reader: Any) -> tuple[list[str], list[int]]:
    """Tokens and token types as stored in the file."""
    tokens, types = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    return ([bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data],
            [int(types.parts[i][0]) for i in types.data])


def _restore_user_defined(g_tok: Any, reader: Any) -> list[str]:
    """Register the file's USER_DEFINED tokens that transformers' GGUF loader dropped, at their ids; return them.

    For a "gpt2" vocabulary the loader respells every token into the byte-level alphabet and then adds as whole tokens
    only the USER_DEFINED ones whose stored text is in that respelled vocabulary (`add_gguf_special_tokens`), so an
    added token such as "岐黄" (stored as raw text, as llama.cpp's converter stores it and llama.cpp matches it) gets
    cut into byte pieces. Here the respelled entry gets its raw text back and becomes an added token, which is what
    llama.cpp does with it."""
    from tokenizers import Tokenizer

    vocab = g_tok.get_vocab()
    tokens, types = _gguf_vocab(reader)
    missing = {i: t for i, (t, ty) in enumerate(zip(tokens, types)) if ty == USER_DEFINED and t not in vocab}
    if not missing:
        return []
    spec = json.loads(g_tok.backend_tokenizer.to_str())
    model_vocab = spec["model"]["vocab"]
    for respelled in [t for t, i in model_vocab.items() if i in missing]:
        model_vocab[missing[model_vocab.pop(respelled)]] = vocab[respelled]
    spec["added_tokens"] += [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": False} for i, t in missing.items()]
    g_tok._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return list(missing.values())


def _tokenization_mismatches(tok: Any, g_tok: Any) -> list[str]:
    """Texts (with and without special tokens, and the chat probes) that the two tokenizers encode differently."""
    from qihuang.template import encode_prompt

    bad = [f"{t!r} add_special_tokens={s}" for t in VERIFY_TEXTS for s in (False, True)
           if tok(t, add_special_tokens=s)["input_ids"] != g_tok(t, add_special_tokens=s)["input_ids"]]
    bad += [f"chat probe {i}" for i, msgs in enumerate(PROBE) if encode_prompt(tok, msgs) != encode_prompt(g_tok, msgs)]
    return bad


def verify_gguf(model_dir: Path, path: Path) -> dict[str, Any]:
    """Read the GGUF back (GGUFReader: architecture, tokenizer model, tensors, vocabulary) and load it with
    transformers (`gguf_file=`): compare tokenization and logits with the HF model."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    reader = GGUFReader(str(path))
    arch, tok_model = _field_str(reader, "general.architecture"), _field_str(reader, "tokenizer.ggml.model")
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    g_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    restored = _restore_user_defined(g_tok, reader)
    g_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    cmp = compare_logits(probe_logits(hf, tok), probe_logits(g_model, tok))
    mismatches = _tokenization_mismatches(tok, g_tok)
    ok = (arch == "llama" and tok_model == tokenizer_kind(Path(model_dir)) and not mismatches
          and cmp["top1_agreement"] >= 0.98 and n_tokens == hf.config.vocab_size)
    return {"architecture": arch, "tokenizer_model": tok_model, "tensors": len(reader.tensors), "vocab": n_tokens,
            "same_tokenization": not mismatches, "tokenization_mismatches": mismatches,
            "loader_restored_tokens": restored, **cmp, "ok": ok}
