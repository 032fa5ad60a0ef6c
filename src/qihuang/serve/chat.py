"""Terminal chat: streaming answers, conversation history, `/reset`, `/cite on|off`, citations under answers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from qihuang.serve.engine import EngineError, SamplingParams
from qihuang.rag import answer_chunks, citations_for, prepare_prompt
from qihuang.retrieval import PassageIndex
from qihuang.serve.settings import ChatConfig

HELP = "commands: /reset (new conversation), /cite on|off (citations), /help, /quit"


class ChatSession:
    """History + retrieval settings of one terminal conversation."""

    def __init__(self, engine: Any, index: PassageIndex | None, cfg: ChatConfig) -> None:
        self.engine = engine
        self.index = index
        self.cfg = cfg
        self.cite = cfg.cite and index is not None
        self.history: list[dict[str, str]] = []

    def command(self, line: str) -> str | None:
        """Handle a /command; returns the reply to print (None: not a command)."""
        parts = line.strip().split()
        if not parts or not parts[0].startswith("/"):
            return None
        cmd, args = parts[0].lower(), parts[1:]
        if cmd == "/reset":
            self.history.clear()
            return "(conversation reset)"
        if cmd == "/cite":
            if not args or args[0] not in ("on", "off"):
                return f"usage: /cite on|off (now {'on' if self.cite else 'off'})"
            if args[0] == "on" and self.index is None:
                return "(no passages loaded: start with --passages FILE or a run dir)"
            self.cite = args[0] == "on"
            return f"(citations {args[0]})"
        if cmd in ("/help", "/?"):
            return HELP
        return f"unknown command {cmd}; {HELP}"

    def ask(self, question: str, write: Callable[[str], None]) -> tuple[str, list[dict[str, Any]]]:
        """Stream the answer to `question` through `write`; returns (answer, citations) and extends history."""
        messages = [*self.history, {"role": "user", "content": question}]
        prep = prepare_prompt(self.engine, messages, self.index if self.cite else None, self.cfg.passages_k,
                              self.cfg.passage_chars, self.cfg.max_tokens, self.cfg.relevance_gate,
                              self.cfg.cite_first)
        params = SamplingParams(max_new_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature)
        parts = []
        for chunk in answer_chunks(self.engine, prep, params, self.cfg.answer_guard,
                                   min_support=self.cfg.answer_support, verbatim=self.cfg.verbatim_quotes):
            if chunk.text:
                parts.append(chunk.text)
                write(chunk.text)
        answer = "".join(parts)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return answer, citations_for(prep.hits, prep.query, answer)


def format_citations(citations: list[dict[str, Any]]) -> str:
    """Citation lines shown under an answer."""
    lines = []
    for c in citations:
        mark = "*" if c["cited"] else " "
        lines.append(f" {mark}[{c['index']}] {c['title']} ({c['id']}): {c['quote']}")
    return "\n".join(lines)


def run_chat(engine: Any, index: PassageIndex | None, cfg: ChatConfig, read: Callable[[str], str] = input,
             out: TextIO = sys.stdout) -> int:
    """The read-answer loop; returns the number of questions answered (ends on EOF, /quit or Ctrl-C)."""
    session = ChatSession(engine, index, cfg)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    write(f"qihuang chat · model {engine.name} · "
          f"{len(index.passages) if index else 0} passages · citations {'on' if session.cite else 'off'}\n{HELP}\n")
    answered = 0
    while True:
        try:
            line = read("\n你> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return answered
        if not line.strip():
            continue
        if line.strip().lower() in ("/quit", "/exit"):
            return answered
        reply = session.command(line)
        if reply is not None:
            write(reply + "\n")
            continue
        write("岐黄> ")
        try:
            _, cites = session.ask(line.strip(), write)
        except EngineError as exc:
            write(f"\n(error: {exc}; try /reset)\n")
            continue
        except KeyboardInterrupt:
            write("\n(interrupted)\n")
            continue
        write("\n")
        if session.cite and cites:
            write("出处:\n" + format_citations(cites) + "\n")
        answered += 1
