"""The answer guard: what a user may see of a generated answer (cut where it turns degenerate, quote the cited passage
when nothing of its own is left), after the fact and while streaming."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from qihuang.answer_guard import FALLBACK_LEAD, HOLD_CHARS, clean_length, guard_answer, guard_stream, own_chars
from qihuang.evaluate.answers import is_degenerate
from qihuang.retrieval import Passage

HUANGLIAN = Passage(id="p", book="假托本草", section="黄连", text="黄连味苦寒，主热气目痛。苦能燥湿，寒能清热。")
OPEN = "据《假托本草·黄连》："


def test_a_clean_answer_passes_unchanged() -> None:
    answer = OPEN + "黄连味苦性寒，能清热燥湿，主热气目痛。"
    out = guard_answer(answer, "黄连的性味如何？", HUANGLIAN, OPEN)
    assert out.text == answer and not out.cut and not out.fallback


def test_a_loop_is_cut_at_the_last_sentence_before_it() -> None:
    answer = OPEN + "黄连味苦性寒，能清热燥湿。主之主之主之主之主之"
    out = guard_answer(answer, "黄连的性味如何？", HUANGLIAN, OPEN)
    assert out.cut and out.text == OPEN + "黄连味苦性寒，能清热燥湿。" and not is_degenerate(out.text)
    assert clean_length("桂枝三两，芍药三两。") == len("桂枝三两，芍药三两。")


def test_noise_or_an_echo_falls_back_to_the_cited_passage() -> None:
    noise = OPEN + "“黄”：“连”：“苦”：“寒”：“主”：“热”"
    out = guard_answer(noise, "黄连的性味如何？", HUANGLIAN, OPEN)
    assert out.cut and out.fallback and out.text.startswith(OPEN + FALLBACK_LEAD + "「")
    assert "苦寒" in out.text and not is_degenerate(out.text)
    echo = guard_answer(OPEN + "黄连的性味如何？", "黄连的性味如何？", HUANGLIAN, OPEN)
    assert echo.fallback and not echo.cut and own_chars("黄连的性味如何？", "黄连的性味如何？") == 0
    assert guard_answer("", "问", None).text == ""  # nothing cited: nothing to quote


def test_a_verbatim_quotation_of_the_cited_passage_is_kept_though_the_question_quotes_it() -> None:
    attribution = "“苦能燥湿，寒能清热。”出自哪部医书？"
    for body in ("“苦能燥湿，寒能清热。”", "「苦能燥湿，寒能清热。」", "原文：「苦能燥湿，寒能清热。」"):
        out = guard_answer(OPEN + body, attribution, HUANGLIAN, OPEN)
        assert out.text == OPEN + body and not out.fallback, body
    cloze = guard_answer(OPEN + "“黄连味苦寒，主热气目痛。”", "补全原文：黄连味苦寒，主____目痛。", HUANGLIAN, OPEN)
    assert not cloze.fallback and cloze.text.endswith("主热气目痛。”")
    for body in ("“苦能燥湿，寒能清火。”",  # not the passage's words
                 "“苦能燥湿”",  # too short to be an answer of its own
                 "“苦能燥湿，寒能清热。”出自哪部医书？"):  # the question again
        out = guard_answer(OPEN + body, attribution, HUANGLIAN, OPEN)
        assert out.fallback and out.text.startswith(OPEN + FALLBACK_LEAD), body


def test_a_quotation_the_token_budget_cut_ends_at_its_last_clause_and_is_closed() -> None:
    from qihuang.answer_guard import OMITTED, close_quotation

    q = "黄连的性味如何？"
    for body, shown in (("“黄连味苦寒，主热气目痛。苦能燥", "“黄连味苦寒，主热气目痛。”"),  # at a sentence end
                        ("“黄连味苦寒，主热气目痛。苦能燥湿，寒能", f"“黄连味苦寒，主热气目痛。苦能燥湿{OMITTED}”"),  # at a clause
                        ("黄连味苦性寒，能清热燥湿。「苦能", "黄连味苦性寒，能清热燥湿。"),  # no clause: dropped
                        ("“黄连「苦寒，主热」目痛，苦", f"“黄连「苦寒，主热」目痛{OMITTED}”"),  # marks inside it
                        ("“黄连味苦寒（一作大寒，主热", f"“黄连味苦寒（一作大寒{OMITTED}）”")):  # inside a note
        out = guard_answer(OPEN + body, q, HUANGLIAN, OPEN)
        assert out.text == OPEN + shown and not out.fallback, body
    text = "“黄连「苦寒，主热」目痛苦"  # the last clause mark is inside a quotation closed after it: both close
    assert close_quotation(text) == (len("“黄连「苦寒"), f"{OMITTED}」”")
    whole = OPEN + "“黄连味苦寒，主热气目痛。”"
    assert guard_answer(whole, q, HUANGLIAN, OPEN).text == whole  # closed: unchanged
    nothing = guard_answer(OPEN + "“黄连", q, HUANGLIAN, OPEN)  # nothing finished: the fallback quote
    assert nothing.fallback and nothing.text.startswith(OPEN + FALLBACK_LEAD)
    # streamed: the client already has text past the last clause; the quotation is closed after it
    stop = threading.Event()
    pieces = [OPEN, "“黄连味苦寒，主热气目痛。苦能燥湿，", "寒能清"]
    out_chunks = list(guard_stream(_stream(pieces, [], stop), q, HUANGLIAN, OPEN, stop, _make, hold=0))
    assert "".join(c.text for c in out_chunks) == OPEN + f"“黄连味苦寒，主热气目痛。苦能燥湿，寒能清{OMITTED}”"


def test_an_answer_that_stops_after_a_clause_mark_ends_with_the_omission_mark() -> None:
    """An answer the token budget stopped inside a sentence, outside any quotation (「…十二枚 右五味，」, 「原文写道：」),
    does not end on a dangling clause mark: OMITTED takes its place, after the fact and streamed; an answer that
    simply ends without a full stop, or at one, is left as it is."""
    from qihuang.answer_guard import OMITTED

    q = "黄连的性味如何？"
    for body, shown in (("黄连味苦性寒，能清热燥湿，", f"黄连味苦性寒，能清热燥湿{OMITTED}"),
                        ("黄连味苦性寒，主热气目痛，书中写道：", f"黄连味苦性寒，主热气目痛，书中写道{OMITTED}"),
                        ("黄连味苦性寒，能清热燥湿", "黄连味苦性寒，能清热燥湿"),
                        ("黄连味苦性寒，能清热燥湿。", "黄连味苦性寒，能清热燥湿。")):
        out = guard_answer(OPEN + body, q, HUANGLIAN, OPEN)
        assert out.text == OPEN + shown and not out.fallback, body
        assert out.closed == (OMITTED if shown != body else ""), body
    assert guard_answer(OPEN, q, None, OPEN).text == OPEN  # the opening's own colon is ours, not a cut clause
    for hold in (HOLD_CHARS, 0):  # the mark still held back, or already sent: the omission mark follows it
        stop = threading.Event()
        pieces = [OPEN, "黄连味苦性寒，", "能清热燥湿，"]
        out_chunks = list(guard_stream(_stream(pieces, [], stop), q, HUANGLIAN, OPEN, stop, _make, hold=hold))
        text = "".join(c.text for c in out_chunks)
        assert text == OPEN + "黄连味苦性寒，能清热燥湿" + ("，" if hold == 0 else "") + OMITTED, hold


def test_a_clause_that_only_opened_a_dropped_quotation_goes_with_it() -> None:
    """A quotation with no finished clause is dropped (`close_quotation`); the clause that introduced it with a colon
    (「汤方：」, 「书中写道：」) has nothing left to introduce and goes too — run E's chat sample ended
    「…十二枚 汤方：」 — after the fact and streamed; what is left ends as any answer does (a clause mark → OMITTED,
    nothing of its own → the fallback quote)."""
    from qihuang.answer_guard import OMITTED, close_quotation

    assert close_quotation("甲，书中写道：“黄连") == (len("甲，"), "")  # the quotation and its introducer
    assert close_quotation(OPEN + "“黄连", len(OPEN)) == (len(OPEN), "")  # the opening's colon is ours
    gui = Passage(id="g", book="医宗金鉴", section="桂枝汤方", text="桂枝三两 芍药三两 甘草（炙）三两 生姜（切）三两 大枣（擘）十二枚")
    opening = "据《医宗金鉴·桂枝汤方》："
    answer = opening + "桂枝三两 芍药三两 甘草（炙）三两 生姜（切）三两 大枣（擘）十二枚 汤方：“桂枝三两 芍"
    out = guard_answer(answer, "桂枝汤由哪些药物组成？", gui, opening)
    assert out.text == opening + gui.text and out.closed == "" and not out.fallback
    q = "黄连的性味如何？"
    for body, shown in (("黄连味苦性寒，能清热燥湿。书中写道：“黄连味", "黄连味苦性寒，能清热燥湿。"),
                        ("黄连味苦性寒，能清热燥湿，书中写道：“黄连味", f"黄连味苦性寒，能清热燥湿{OMITTED}"),
                        ("黄连味苦性寒，能清热燥湿，见《本经》：“黄连味", f"黄连味苦性寒，能清热燥湿{OMITTED}"),
                        ("黄连味苦性寒，能清热燥湿，“黄连味", f"黄连味苦性寒，能清热燥湿{OMITTED}")):  # no colon: no introducer
        assert guard_answer(OPEN + body, q, HUANGLIAN, OPEN).text == OPEN + shown, body
    only = guard_answer(OPEN + "书中写道：“黄连味", q, HUANGLIAN, OPEN)  # nothing of its own left
    assert only.fallback and only.text.startswith(OPEN + FALLBACK_LEAD)
    stop = threading.Event()  # streamed: the introducer is still held back when the stream ends
    pieces = [opening, "桂枝三两 芍药三两 甘草（炙）三两 生姜（切）三两 ", "大枣（擘）十二枚 汤方：", "“桂枝三两 芍"]
    out_chunks = list(guard_stream(_stream(pieces, [], stop), "桂枝汤由哪些药物组成？", gui, opening, stop, _make))
    assert "".join(c.text for c in out_chunks) == opening + gui.text


@dataclass
class FakeChunk:
    text: str
    completion_tokens: int
    prompt_tokens: int = 3
    finish_reason: str | None = None


def _stream(pieces: list[str], pulled: list[str], stop: threading.Event) -> Iterator[FakeChunk]:
    for i, p in enumerate(pieces):
        if stop.is_set():
            yield FakeChunk("", i, finish_reason="cancelled")
            return
        pulled.append(p)
        yield FakeChunk(p, i + 1, finish_reason="length" if i == len(pieces) - 1 else None)


def _make(text: str, last: FakeChunk | None, finish: str | None) -> FakeChunk:
    return FakeChunk(text, last.completion_tokens if last else 0, 3, finish)


def test_stream_holds_back_a_loop_and_stops_the_generation() -> None:
    pieces = [OPEN, "黄连", "味苦", "性寒。"] + ["主之"] * 40
    stop, pulled = threading.Event(), []
    out = list(guard_stream(_stream(pieces, pulled, stop), "黄连的性味如何？", HUANGLIAN, OPEN, stop, _make))
    assert out[0].text == OPEN  # the opening goes out at once
    text = "".join(c.text for c in out)
    assert text == OPEN + "黄连味苦性寒。" and out[-1].finish_reason == "stop"
    assert stop.is_set() and len(pulled) < len(pieces)  # the engine was stopped, not run to max_tokens
    assert all(not is_degenerate(c.text) for c in out if c.text)


def test_stream_of_a_clean_answer_is_the_answer() -> None:
    body = "黄连味苦性寒，能清热燥湿，主热气目痛，久服令人不忘。" * 2
    pieces = [OPEN] + [body[i:i + 3] for i in range(0, len(body), 3)]
    stop, pulled = threading.Event(), []
    out = list(guard_stream(_stream(pieces, pulled, stop), "黄连", HUANGLIAN, OPEN, stop, _make))
    assert "".join(c.text for c in out) == OPEN + body and out[-1].finish_reason == "length"
    assert len(out) > 3 and not stop.is_set()  # streamed as it came, HOLD_CHARS behind
    assert len(out[-1].text) <= HOLD_CHARS + 3
    held = list(guard_stream(_stream(pieces, [], threading.Event()), "黄连", HUANGLIAN, OPEN, threading.Event(),
                             _make, hold=None))
    assert [c.text for c in held] == [OPEN, body]  # not streaming: the rest in one piece at the end


def test_an_answer_that_starts_over_is_cut_where_it_does() -> None:
    """The demo's chat samples (session 7): the opening written again after a line break or a sentence end is a
    model that lost its place; a second source (又据《…》) is not."""
    restarted = OPEN + "\n据《假托本草·黄连：“下”。"  # unclosed title: still a citation, not words of its own
    out = guard_answer(restarted, "黄连的性味如何？", HUANGLIAN, OPEN)
    # a question on the entry as a whole (its 性味) quotes the entry from its head: here all of it
    assert out.cut and out.fallback and out.text == OPEN + FALLBACK_LEAD + f"「{HUANGLIAN.text}」"
    again = OPEN + "黄连味苦性寒，能清热燥湿。据《假托本草·黄连》：“苦能"
    assert guard_answer(again, "黄连", HUANGLIAN, OPEN).text == OPEN + "黄连味苦性寒，能清热燥湿。"
    second = OPEN + "黄连味苦性寒，能清热燥湿。又据《别录》，主热气。"
    assert guard_answer(second, "黄连", HUANGLIAN, OPEN).text == second
    stop, pulled = threading.Event(), []
    pieces = [OPEN, "黄连", "味苦性寒，", "能清热燥湿。", "\n据《", "假托本草", "》：", "苦能"] + ["燥湿"] * 30
    out_chunks = list(guard_stream(_stream(pieces, pulled, stop), "黄连", HUANGLIAN, OPEN, stop, _make))
    assert "".join(c.text for c in out_chunks) == OPEN + "黄连味苦性寒，能清热燥湿。" and stop.is_set()


def test_an_unsupported_sentence_is_cut_and_only_supported_text_is_kept() -> None:
    from qihuang.answer_guard import Support

    support = Support.of("黄连的性味如何？", [HUANGLIAN], 0.5)
    assert support is not None and Support.of("问", [HUANGLIAN], 0.0) is None and Support.of("问", [], 0.5) is None
    invented = OPEN + "黄连味苦寒，能清热燥湿。此乃《伤寒昏法》痞方法之祖也。黄连主热气。"
    out = guard_answer(invented, "黄连的性味如何？", HUANGLIAN, OPEN, support)
    assert out.cut and out.unsupported and not out.fallback and out.text == OPEN + "黄连味苦寒，能清热燥湿。"
    assert guard_answer(invented, "黄连的性味如何？", HUANGLIAN, OPEN).text == invented  # check off: unchanged
    clean = OPEN + "黄连味苦寒，主热气目痛。"
    assert guard_answer(clean, "黄连的性味如何？", HUANGLIAN, OPEN, support).text == clean
    # nothing supported at all: the cited passage is quoted instead
    made_up = guard_answer(OPEN + "这是一种古老的说法，现代人很少使用。", "黄连的性味如何？", HUANGLIAN, OPEN, support)
    assert made_up.unsupported and made_up.fallback and made_up.text.startswith(OPEN + FALLBACK_LEAD)
    assert support.share("是") is None and support.share("黄连味苦") == 1.0


def test_streaming_with_support_holds_each_sentence_and_stops_at_an_unsupported_one() -> None:
    from qihuang.answer_guard import Support

    support = Support.of("黄连的性味如何？", [HUANGLIAN], 0.5)
    pieces = [OPEN, "黄连味", "苦寒，能清", "热燥湿。", "此乃《伤寒", "昏法》", "痞方法之祖也。", "黄连", "主热气。"]
    stop, pulled, sent = threading.Event(), [], []
    for chunk in guard_stream(_stream(pieces, pulled, stop), "黄连的性味如何？", HUANGLIAN, OPEN, stop, _make,
                              support=support):
        sent.append(chunk.text)
    assert "".join(sent) == OPEN + "黄连味苦寒，能清热燥湿。" and sent[-1:] != ["黄连"]
    assert stop.is_set() and "主热气。" not in pulled  # the engine was stopped at the unsupported sentence
    assert sent[0] == OPEN and "".join(sent[:2]) in (OPEN, OPEN + "黄连味苦寒，能清热燥湿。")  # no half sentence


def test_a_line_break_before_an_unsupported_sentence_is_not_sent() -> None:
    """Run B's chat samples: 「据《…》：\\n原文：「…」」 — whitespace alone waits for the text after it."""
    from qihuang.answer_guard import Support

    support = Support.of("黄连的性味如何？", [HUANGLIAN], 0.5)
    pieces = [OPEN, "\n", "这是一种古老的说法，", "现代人很少使用", "。现代人很少使用它。"]
    stop = threading.Event()
    out = "".join(c.text for c in guard_stream(_stream(pieces, [], stop), "黄连的性味如何？", HUANGLIAN, OPEN, stop,
                                               _make, hold=2, support=support))
    assert out == guard_answer("".join(pieces), "黄连的性味如何？", HUANGLIAN, OPEN, support).text
    assert out.startswith(OPEN + FALLBACK_LEAD) and "\n" not in out


def test_a_generation_stopped_where_the_guard_turns_is_guarded_the_same() -> None:
    """`stop_when`: the eval's batch decoding stops an answer where the guard would cut it (as a stream stops);
    what users see of the stopped answer is what they would see of the whole one."""
    from qihuang.answer_guard import Support, stop_when

    q = "黄连的性味如何？"
    support = Support.of(q, [HUANGLIAN], 0.5)
    answers = ["黄连味苦寒，能清热燥湿。此乃《伤寒昏法》痞方法之祖也。黄连主热气。",  # unsupported second sentence
               "黄连味苦性寒，能清热燥湿。主之主之主之主之主之主之主之",  # a loop
               "黄连味苦寒。\n据《假托本草·黄连》：黄连味苦寒。",  # starts over
               "黄连味苦寒，主热气目痛。",  # clean: never stops
               "这是一种古老的说法，现代人很少使用。黄连味苦寒。"]  # nothing supported: the fallback quote
    stopped_early = 0
    for body in answers:
        test = stop_when(OPEN, support)
        end = next((n for n in range(1, len(body) + 1) if test(body[:n])), len(body))
        stopped_early += end < len(body)
        whole = guard_answer(OPEN + body, q, HUANGLIAN, OPEN, support)
        assert guard_answer(OPEN + body[:end], q, HUANGLIAN, OPEN, support) == whole, body
    assert stopped_early == 4
    assert not stop_when(OPEN, None)("黄连味苦寒。此乃《伤寒昏法》痞方法之祖也。")  # without support: loops only


def test_text_glued_to_a_copy_of_the_passage_is_judged_on_its_own() -> None:
    """Run X's chat sample: 「据《医宗金鉴·…/桂枝汤方》：桂枝三两 … 大枣（擘）十二枚 汤方（桂枝三头）原文」 — a copy of the
    entry with no mark after it, then invented words in the same "sentence", which the copy's bigrams carried."""
    from qihuang.answer_guard import Support, stop_when

    entry = Passage(id="g", book="假托金鉴", section="桂枝汤方",
                    text="桂枝三两 芍药三两 甘草（炙）三两 生姜（切）三两 大枣（擘）十二枚 右五味，以水七升，微火煮取三升。")
    q, opening = "桂枝汤由哪些药物组成？", "据《假托金鉴·桂枝汤方》："
    support = Support.of(q, [entry], 0.5)
    copy = "桂枝三两 芍药三两 甘草（炙）三两 生姜（切）三两 大枣（擘）十二枚"
    for glued in (f"{copy} 汤方（桂枝三头）原文", f"“{copy}”汤方（桂枝三头）原文。"):
        out = guard_answer(opening + glued, q, entry, opening, support)
        assert out.unsupported and out.text.rstrip("”") == opening + "“" * glued.startswith("“") + copy, out.text
        assert stop_when(opening, support)(glued + "。")  # a stream / the eval's decoding stops there too
    for kept in (f"{copy} 右五味，以水七升", f"{copy}。以水七升", f"{copy}，芍药三两"):  # the passage goes on; a mark
        assert guard_answer(opening + kept, q, entry, opening, support).text == opening + kept
