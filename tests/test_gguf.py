"""GGUF export for both tokenizer kinds: byte-level BPE ("gpt2") and SentencePiece ("llama", with and without
tokenizer.model); each file is loaded back with transformers' GGUF loader and compared with the source model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest

from qihuang.gguf_export import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, export_gguf, tokenizer_kind,
                                 verify_gguf)

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }} {{ eos_token }}"
    "{% endif %}{% endfor %}")
LINES = ["黄帝问曰：余闻上古之人，春秋皆度百岁，而动作不衰。", "阴阳者，天地之道也，万物之纲纪，变化之父母。",
         "桂枝汤方：桂枝三两，芍药三两，甘草二两，生姜三两，大枣十二枚。", "你是中医古籍助手。何谓阴阳？请引《素问》作答。",
         "The Yellow Emperor asked Qibo about yin and yang, 24 times.",
         "Chapter 5: Cold Damage (Shang Han Lun), p. 137"]
SAMPLE = "黄帝问曰：阴阳 Hello\n world 123 龘"  # 龘 is not in the training text: byte fallback


def _tiny_llama(tok: Any, out: Path, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qihuang.models import TINY_SHAPE

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TINY_SHAPE)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny LLaMA with a 400-token byte-level BPE and the SmolLM2 chat template (GGUF read-back stays fast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qihuang.models import load_tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = ["黄帝问曰：余闻上古之人，春秋皆度百岁。", "阴阳者，天地之道也，万物之纲纪。", "Hello, world! 123"] * 20
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = load_tokenizer(tiny_model_dir).chat_template
    tok.add_tokens(["岐黄"])  # a non-special added token, as vocabulary extension (#4) makes
    return _tiny_llama(tok, tmp_path_factory.mktemp("bpe") / "model", 3)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA-2-style model: a 480-piece SentencePiece BPE with byte fallback (trained here, offline), its
    tokenizer.model beside tokenizer.json, BOS added, a LLaMA-2 chat template and one added token."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    src = tmp_path_factory.mktemp("spm_src")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{line} {i}" if i % 3 else line for i in range(60) for line in LINES),
        model_prefix=str(src / "tokenizer"), model_type="bpe", vocab_size=480, byte_fallback=True,
        character_coverage=1.0, split_digits=True, bos_id=1, eos_id=2, unk_id=0, num_threads=1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False)  # as LLaMA's tokenizer.model
    tok = LlamaTokenizer.from_pretrained(str(src), add_bos_token=True, add_eos_token=False)
    tok.chat_template = LLAMA2_TEMPLATE
    tok.add_tokens(["岐黄"])
    out = _tiny_llama(tok, tmp_path_factory.mktemp("spm") / "model", 4)
    shutil.copy(src / "tokenizer.model", out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def spm_json_model(spm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as transformers ≥ 5 saves it after training: tokenizer.json only, no tokenizer.model."""
    out = tmp_path_factory.mktemp("spm_json") / "model"
    shutil.copytree(spm_model, out, ignore=shutil.ignore_patterns("tokenizer.model"))
    return out


def _field(reader: Any, key: str) -> list[Any]:
    f = reader.fields[key]
    return [f.parts[i].tobytes().decode() if f.types[-1].name == "STRING" else f.parts[i][0] for i in f.data]


def test_tokenizer_kind(bpe_model: Path, spm_model: Path, spm_json_model: Path, tiny_model_dir: Path,
                        tmp_path: Path) -> None:
    assert tokenizer_kind(bpe_model) == tokenizer_kind(tiny_model_dir) == "gpt2"
    assert tokenizer_kind(spm_model) == tokenizer_kind(spm_json_model) == "llama"
    shutil.copy(spm_model / "tokenizer.model", tmp_path / "tokenizer.model")  # a bare SentencePiece folder
    assert tokenizer_kind(tmp_path) == "llama"
    assert [NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE] == [int(t) for t in gguf.TokenType]


@pytest.mark.parametrize("kind,outtype", [("bpe", "f32"), ("bpe", "f16"), ("spm", "f32"), ("spm", "f16"),
                                          ("spm_json", "f32")])
def test_gguf_export_reads_back(kind: str, outtype: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from gguf import GGUFReader

    model_dir = request.getfixturevalue(f"{kind}_model")
    target = tmp_path / f"m-{outtype}.gguf"
    info = export_gguf(model_dir, target, outtype)
    reader = GGUFReader(str(target))
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names
    assert info["tensors"] == len(reader.tensors) and "tokenizer.chat_template" in reader.fields
    types = [int(t) for t in _field(reader, "tokenizer.ggml.token_type")]
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert types[tokens.index("岐黄")] == USER_DEFINED  # the added non-special token
    check = verify_gguf(model_dir, target)
    assert check["ok"] and check["same_tokenization"], check["tokenization_mismatches"]
    assert check["top1_agreement"] >= 0.98 and check["max_abs_diff"] < (1e-4 if outtype == "f32" else 5e-2)
    if kind == "bpe":
        assert info["tokenizer_model"] == check["tokenizer_model"] == "gpt2" and info["tokenizer_pre"] == "gpt-2"
        assert len(reader.fields["tokenizer.ggml.merges"].data) > 0 and "tokenizer.ggml.scores" not in reader.fields
        return
    assert info["tokenizer_model"] == check["tokenizer_model"] == "llama"
    assert "tokenizer.ggml.merges" not in reader.fields  # llama.cpp's SentencePiece tokenizer merges by score
    assert info["vocab_source"] == ("tokenizer.model" if kind == "spm" else "tokenizer.json")
    scores = [float(s) for s in _field(reader, "tokenizer.ggml.scores")]
    assert len(scores) == len(tokens) == len(types) and len(set(scores)) > 200
    assert types[tokens.index("<0x0A>")] == BYTE and sum(t == BYTE for t in types) == 256
    assert types[tokens.index("<unk>")] == UNKNOWN and types[tokens.index("<s>")] == CONTROL
    assert any(t.startswith("▁") for t in tokens)
    assert bool(reader.fields["tokenizer.ggml.add_bos_token"].parts[-1][0])


@pytest.mark.parametrize("kind", ["spm", "spm_json"])
def test_gguf_sentencepiece_tokenizes_like_sentencepiece(kind: str, request: pytest.FixtureRequest,
                                                         spm_model: Path, tmp_path: Path) -> None:
    """The GGUF's vocabulary, loaded by transformers, cuts text into the pieces SentencePiece itself does (newline and
    an unseen character as <0xXX> bytes), whichever file the scores came from."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(f"{kind}_model")
    export_gguf(model_dir, tmp_path / "m.gguf", "f32")
    g_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model / "tokenizer.model"))
    pieces = g_tok.tokenize(SAMPLE)
    assert pieces == sp.encode(SAMPLE, out_type=str) and "<0x0A>" in pieces and "<0xE9>" in pieces
    assert g_tok(SAMPLE)["input_ids"] == [1] + sp.encode(SAMPLE)
