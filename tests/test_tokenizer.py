"""Vocabulary extension: byte-level BPE (tiny-llama has SmolLM2's tokenizer) and SentencePiece."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qihuang.runs import StageDir
from qihuang.tokenizer import TokenizerConfig, TokenizerExtensionError, extend_tokenizer
from tests.training.helpers import invented_text, write_passages


@pytest.fixture(scope="module")
def passages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tokdata")
    return write_passages(d / "train.jsonl", 40, 1), write_passages(d / "heldout.jsonl", 8, 2, book="留书")


def _check_extended(base_dir: Path, model_dir: Path, summary: dict, rescaled: bool = True) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(str(base_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    assert summary["added"] > 20
    assert len(tok) == len(base_tok) + summary["added"]
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert summary["tokens_per_char_after"] < summary["tokens_per_char_before"]
    assert summary["tokens_per_char_after"] < 1.2
    # every added character is one token now, and decoding round-trips mixed text
    text = "黄帝问曰：" + invented_text(3, 7) + " Hello world, 42 度。\n脾 胃"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(base_tok.encode(text, add_special_tokens=False))
    # new rows = mean of the rows of the pieces the old tokenizer used
    old_w = base.get_input_embeddings().weight.detach()
    new_w = model.get_input_embeddings().weight.detach()
    assert torch.equal(new_w[: len(base_tok)], old_w)
    ext = json.loads((model_dir / "qihuang_extension.json").read_text())
    for nid in range(ext["added_range"][0], ext["added_range"][0] + 5):
        s = tok.convert_ids_to_tokens(nid)
        pieces = base_tok.encode("。" + s, add_special_tokens=False)[len(base_tok.encode("。", add_special_tokens=False)):]
        assert len(pieces) > 1
        mean = old_w[pieces].mean(0)
        if not rescaled:
            torch.testing.assert_close(new_w[nid], mean)
            continue
        # rescaled to the pieces' mean norm, still pointing the mean's way
        torch.testing.assert_close(new_w[nid].norm(), old_w[pieces].norm(dim=1).mean())
        assert float(torch.nn.functional.cosine_similarity(new_w[nid], mean, dim=0)) > 0.7
        assert float(mean.norm()) < float(new_w[nid].norm())
    assert not torch.equal(new_w[ext["added_range"][0]], new_w[ext["added_range"][0] + 1])


def test_extend_byte_level_bpe(tiny_model_dir: Path, passages: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "tok")
    summary = extend_tokenizer(TokenizerConfig(), tiny_model_dir, *passages, out)
    _check_extended(tiny_model_dir, out.path / "model", summary)
    assert summary["coverage_train_after"] > 0.99 > summary["coverage_train_before"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out.path / "model"))
    msgs = [{"role": "user", "content": "脾胃何如？"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\n脾胃何如？<|im_end|>" in prompt
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert tok.convert_tokens_to_ids("脾") in ids and tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert tok.decode(ids) == prompt


def test_mean_init_without_rescaling(tiny_model_dir: Path, passages: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "tok")
    summary = extend_tokenizer(TokenizerConfig(rescale_new_rows=False), tiny_model_dir, *passages, out)
    _check_extended(tiny_model_dir, out.path / "model", summary, rescaled=False)


def test_words_from_lexicon(tiny_model_dir: Path, passages: tuple[Path, Path], tmp_path: Path) -> None:
    lex = tmp_path / "lex.txt"
    lex.write_text("问曰 10 n\n答曰\n不存在词\n", encoding="utf-8")
    cfg = TokenizerConfig(words_file=lex, max_words=5, min_word_count=1)
    summary = extend_tokenizer(cfg, tiny_model_dir, *passages, StageDir(tmp_path / "tokw"))
    assert summary["added_words"] >= 1
    added = json.loads((tmp_path / "tokw" / "added_tokens.json").read_text())
    assert "不存在词" not in added and any(len(w) > 1 for w in added)


def test_disabled_passes_base_through(tiny_model_dir: Path, passages: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "off")
    summary = extend_tokenizer(TokenizerConfig(enabled=False), tiny_model_dir, *passages, out)
    assert summary["added"] == 0 and summary["tokens_per_char_after"] == summary["tokens_per_char_before"]
    assert (out.path / "model" / "config.json").exists()
    from qihuang.models import prepare_model

    assert prepare_model(str(out.path / "model")) == out.path / "model"


def test_fragment_pieces_suppressed_after_extension(tiny_model_dir: Path, passages: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    """Byte fragments (incomplete UTF-8) are listed only for an extended tokenizer, and an engine on the extended
    model masks them out of every next-token distribution."""
    from transformers import AutoTokenizer

    from qihuang.serve.engine import Engine, SamplingParams
    from qihuang.tokenizer import fragment_token_ids

    out = StageDir(tmp_path / "frag")
    extend_tokenizer(TokenizerConfig(), tiny_model_dir, *passages, out)
    tok = AutoTokenizer.from_pretrained(str(out.path / "model"))
    assert fragment_token_ids(AutoTokenizer.from_pretrained(str(tiny_model_dir)), min_added_chars=1) == []
    frags = fragment_token_ids(tok, min_added_chars=1)
    assert frags and all("\ufffd" in tok.decode([i]) for i in frags)
    others = [tok.decode([i]) for i in range(len(tok)) if i not in set(frags)]
    assert all(t == "\ufffd" for t in others if "\ufffd" in t)  # only U+FFFD's own (valid) bytes remain
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out.path / "model"))
    engine = Engine(model, tok, lookup_draft=0)
    engine.suppressed = fragment_token_ids(tok, min_added_chars=1)
    logits = engine._forward(engine.prompts.encode("脾胃"), None, keep=1)
    assert all(logits[-1, i] == float("-inf") for i in engine.suppressed)
    text = "".join(c.text for c in engine.generate(prompt="脾胃", params=SamplingParams(max_new_tokens=8)))
    assert "\ufffd" not in text


def test_sentencepiece_tokenizer(passages: tuple[Path, Path], tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM

    corpus = tmp_path / "spm.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog " * 3] * 50
                                + [invented_text(2, 99)[:6]] * 2), encoding="utf-8")
    base = tmp_path / "spbase"
    base.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(base / "tokenizer"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                                   character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(base))
    tok.save_pretrained(base)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(base)
    out = StageDir(tmp_path / "sptok")
    summary = extend_tokenizer(TokenizerConfig(), base, *passages, out)
    _check_extended(base, out.path / "model", summary)
    assert summary["tied_embeddings"] is False


def test_tokenizer_without_vocab_access(tiny_model_dir: Path, passages: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained(str(tiny_model_dir))

    class Opaque:
        """A tokenizer that can encode but exposes no vocabulary."""

        def __call__(self, *a: object, **k: object) -> object:
            return real(*a, **k)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: Opaque()))
    with pytest.raises(TokenizerExtensionError, match="no access to its vocabulary"):
        extend_tokenizer(TokenizerConfig(), tiny_model_dir, *passages, StageDir(tmp_path / "x"))
