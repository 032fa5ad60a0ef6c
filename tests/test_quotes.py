"""Verbatim quotations (`qihuang.quotes`): inside an open quote mark only the passages shown can be copied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

SOURCE = "是故圣人不治已病治未病，不治已乱治未乱，此之谓也。"
OTHER = "上工治未病，中工治已病。"
QUOTED = re.compile(r"[“「『]([^“”「」『』]*)[”」』]")


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _copy(tok: Any, sources: list[str], lead: str = "") -> Any:
    from qihuang.quotes import QuoteCopy, quote_vocab

    return QuoteCopy(quote_vocab(tok), sources, lead)


def _feed(tok: Any, q: Any, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    for i in ids:
        q.push(i)
    return ids


def test_piece_bytes_spell_the_text_byte_for_byte(tok: Any) -> None:
    from qihuang.tokenizer import piece_bytes

    pieces = piece_bytes(tok)
    text = "据《素问·四气调神大论》：「上工治未病」, said Qi Bo. “不治已病”\n"
    assert b"".join(pieces[i] for i in tok.encode(text, add_special_tokens=False)) == text.encode("utf-8")
    assert all(pieces[i] is None for i in tok.all_special_ids)


def test_outside_a_quotation_nothing_is_constrained(tok: Any) -> None:
    q = _copy(tok, [SOURCE])
    _feed(tok, q, "据《素问》：圣人")
    assert q.allowed() is None and not q.inside


def test_inside_only_copies_of_the_source_and_no_misquote(tok: Any) -> None:
    from qihuang.tokenizer import piece_bytes

    pieces = piece_bytes(tok)
    q = _copy(tok, [SOURCE, OTHER])
    _feed(tok, q, "原文：「")
    assert q.inside
    first = q.allowed()
    assert first
    texts = [s.encode() for s in (SOURCE, OTHER)]
    assert all(any(p in t for t in texts) for p in (pieces[i] for i in first))
    assert not any(pieces[i].startswith("，".encode()) for i in first)  # a quotation does not open on a comma
    assert not any(pieces[i].startswith("」".encode()) for i in first)  # nor close before copying anything
    mid = _copy(tok, [SOURCE])
    _feed(tok, mid, "「圣人")  # 圣 is inside the clause 是故圣人…: a quotation opens on a clause's first character
    assert not mid.inside
    _feed(tok, q, "上工治未病")
    allowed = q.allowed()
    assert set(tok.encode("，", add_special_tokens=False)) <= set(allowed)  # the source goes on with 「，」
    assert tok.encode("而", add_special_tokens=False)[0] not in allowed  # 「上工治未病而…」 is no source's text
    closing = tok.encode("」", add_special_tokens=False)
    assert closing[0] in allowed  # a whole clause copied: the mark may close


def test_push_then_pop_restores_the_state(tok: Any) -> None:
    q = _copy(tok, [SOURCE])
    _feed(tok, q, "「不治")
    before = q.allowed()
    ids = _feed(tok, q, "已乱」又")
    for _ in ids:
        q.pop()
    assert q.allowed() == before and q.inside


def test_an_earlier_quotation_cannot_close_again(tok: Any) -> None:
    q = _copy(tok, [SOURCE])
    _feed(tok, q, "「不治已乱治未乱」，故曰「不治已乱治未乱")
    closing = tok.encode("」", add_special_tokens=False)[0]
    assert q.inside and closing not in q.allowed()  # it must copy on: 「不治已乱治未乱，此之谓也。」
    assert tok.encode("，", add_special_tokens=False)[0] in q.allowed()


def test_a_quotation_closed_by_a_mark_in_pieces_cannot_close_again(tok: Any) -> None:
    # 」 is two byte pieces, and its first (E3 80) also begins the passage's 「。」: the repeat check must not count
    # it as copied text
    q = _copy(tok, ["上工治未病。中工治已病。"])
    _feed(tok, q, "「上工治未病」又「上工治未病")
    first, rest = tok.encode("」", add_special_tokens=False)
    assert q.inside and first in q.allowed()  # E3 80 may still begin 「。」
    q.push(first)
    assert rest not in q.allowed()  # but not finish 「」」: that would repeat 「上工治未病」


def test_a_quotation_closes_at_a_clause_end_only(tok: Any) -> None:
    q = _copy(tok, [OTHER])
    closing = tok.encode("」", add_special_tokens=False)[0]
    _feed(tok, q, "「上工治")
    assert q.inside and closing not in q.allowed()  # 「上工治」 would cut the clause 上工治未病
    _feed(tok, q, "未病")
    assert closing in q.allowed()
    _feed(tok, q, "，")
    assert closing in q.allowed()  # after the clause's mark too


def test_a_quotation_at_the_end_of_its_span_can_only_close(tok: Any) -> None:
    from qihuang.tokenizer import piece_bytes

    pieces = piece_bytes(tok)
    q = _copy(tok, [OTHER])
    _feed(tok, q, "“中工治已病。")
    mark = "”".encode()
    assert all(mark.startswith(pieces[i]) or pieces[i].startswith(mark) for i in q.allowed())
    _feed(tok, q, "”")
    assert not q.inside and q.allowed() is None


def test_the_first_quotation_copies_the_lead_whole_and_the_next_any_clause(tok: Any) -> None:
    from qihuang.decoding import DecodeParams, Repetition

    lead = "不治已乱治未乱，此之谓也。"
    # the model wants to open on 是故圣人 and stop after it: the lead is copied from its start to its end
    rep = Repetition(DecodeParams(), quotes=_copy(tok, [SOURCE], lead))
    text = _decode_wanting(tok, rep, "原文：「是故圣人」", steps=90)
    assert QUOTED.findall(text)[0] == lead, text
    q = _copy(tok, [SOURCE], lead)
    _feed(tok, q, f"「{lead}」，又「是故圣人不治已病治未病")
    closing = tok.encode("」", add_special_tokens=False)[0]
    assert q.inside and closing in q.allowed()  # later quotations open on any clause and close at its end
    q = _copy(tok, [SOURCE], lead)
    _feed(tok, q, "「不治已乱治未乱")
    assert q.inside and closing not in q.allowed()  # the lead's clauses do not end it: only its end does
    _feed(tok, q, "，此之谓也。")
    mark = "」".encode()  # at its end it can only close (the mark whole, its first piece, or the mark and more)
    assert closing in q.allowed()
    assert all(mark.startswith(q.vocab.pieces[i]) or q.vocab.pieces[i].startswith(mark) for i in q.allowed())


def test_an_answer_that_starts_copying_the_lead_without_a_mark_copies_it_whole(tok: Any) -> None:
    from qihuang.decoding import DecodeParams, Repetition

    lead = "不治已乱治未乱，此之谓也。"
    # the model starts on 不治 but wants the other clause (不治已病…) and to stop early: the lead is copied whole
    rep = Repetition(DecodeParams(), quotes=_copy(tok, [SOURCE], lead))
    text = _decode_wanting(tok, rep, "不治已病治未病。好", steps=40)
    assert text.startswith(lead), text
    q = _copy(tok, [SOURCE], lead)
    _feed(tok, q, "\n" + lead)  # white space first, then the lead: copied, closed, nothing constrained after it
    assert not q.inside and q.allowed() is None
    _feed(tok, q, "「是故圣人不治已病治未病")  # the next quotation is free to copy any clause
    assert q.inside and tok.encode("」", add_special_tokens=False)[0] in q.allowed()
    free = _copy(tok, [SOURCE], lead)
    _feed(tok, free, "是说不治")  # an answer that does not start with the lead is not held to it, later either
    assert free.allowed() is None and not free.inside
    back = _copy(tok, [SOURCE], lead)
    ids = _feed(tok, back, "不治")
    assert back.inside
    for _ in ids:
        back.pop()
    assert not back.inside and not back._begun


def _decode_wanting(tok: Any, rep: Any, want: str, steps: int = 60) -> str:
    """Greedy decoding by a 'model' whose favourite next token is always the next one of `want` (then any other in
    id order): what the constraint lets through."""
    import torch

    wanted = tok.encode(want, add_special_tokens=False)
    out: list[int] = []
    for step in range(steps):
        logits = torch.linspace(0.0, -1.0, len(tok))
        if step < len(wanted):
            logits[wanted[step]] = 10.0
        t = int(torch.argmax(rep.apply(logits)))
        out.append(t)
        rep.push(t)
    return tok.decode(out)


def test_a_model_set_on_a_misquote_copies_the_source_instead(tok: Any) -> None:
    from qihuang.decoding import DecodeParams, Repetition

    rep = Repetition(DecodeParams(), quotes=_copy(tok, [OTHER]))
    text = _decode_wanting(tok, rep, "原文：「上工治未病而不治未症」")
    spans = QUOTED.findall(text)
    assert spans and all(s and s in OTHER for s in spans), text
    assert "未症" not in text.split("」")[0]


def test_repetition_control_leaves_a_quotation_alone(tok: Any) -> None:
    from qihuang.decoding import DecodeParams, Repetition

    # n-gram blocking forbids repeating 4 characters; a quotation of the passage may still repeat the answer's words
    rep = Repetition(DecodeParams(no_repeat_ngram_size=4), quotes=_copy(tok, [SOURCE]))
    text = _decode_wanting(tok, rep, "不治已乱者，「不治已乱治未乱」")
    assert "「不治已乱治未乱」" in text, text


def _biased_to(model: Any, token: int) -> None:
    """Make `model` always prefer `token` (a bias on the LM head's output)."""
    import torch

    head = model.get_output_embeddings()

    class Biased(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, hidden: Any) -> Any:
            out = self.head(hidden)
            out[..., token] += 1e4
            return out

    model.set_output_embeddings(Biased())


def test_batched_generation_quotes_only_the_passages(tiny_model_dir: Path) -> None:
    from qihuang.decoding import DecodeParams, _generate_fixed, generate_batch
    from qihuang.models import load_model
    from qihuang.quotes import Quotable

    model, tok = load_model(tiny_model_dir)
    opener = tok.encode("“", add_special_tokens=False)
    assert len(opener) == 1
    _biased_to(model, opener[0])  # the model opens a quotation whenever it may
    prompts = [f"<|im_start|>user\n问{i}<|im_end|>\n<|im_start|>assistant\n" for i in range(3)]
    sources = [Quotable((SOURCE,)), Quotable((OTHER,), lead="中工治已病。"), None]
    out = generate_batch(model, tok, prompts, 120, batch_size=3, quotes=sources)
    for text, src in zip(out[:2], sources[:2], strict=True):
        spans = QUOTED.findall(text)
        assert len(spans) >= 2, text
        assert all(s and s in src.sources[0] for s in spans), text  # verbatim copies of its own passage only
        assert len(set(spans)) == len(spans), text  # no quotation repeated
    assert QUOTED.findall(out[1])[0] == "中工治已病。"  # the first quotation is the lead
    assert not QUOTED.findall(out[2])  # no passages: nothing to copy, the bias writes bare marks
    assert out[2].count("“") >= 2
    # model.generate's path (sliding-window models) decodes the same quotations
    assert _generate_fixed(model, tok, prompts, 120, 3, DecodeParams(), None, sources) == out


def test_engine_streams_verbatim_quotations(tiny_model_dir: Path) -> None:
    from qihuang.quotes import Quotable
    from qihuang.serve.engine import Engine, SamplingParams

    eng = Engine.load(tiny_model_dir)
    _biased_to(eng.model, eng.tokenizer.encode("“", add_special_tokens=False)[0])
    msgs = [{"role": "user", "content": "何谓治未病？"}]
    free = "".join(c.text for c in eng.generate(msgs, params=SamplingParams(max_new_tokens=24)))
    assert not QUOTED.findall(free)  # the bias alone writes bare marks
    text = "".join(c.text for c in eng.generate(msgs, params=SamplingParams(max_new_tokens=48, quotes=Quotable((OTHER,)))))
    spans = QUOTED.findall(text)
    assert len(spans) >= 2 and all(s and s in OTHER for s in spans), text
