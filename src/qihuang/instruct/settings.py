"""`InstructConfig`: every knob of the instruct stage (generators, teacher, refine thresholds, mixing).

The refine thresholds (`RefineSettings`) and the teacher's connection and pacing (`TeacherSettings`) are declared
once, here, and `InstructConfig` inherits them: recipes and flags keep their flat keys (`grounding_threshold`,
`--teacher-url`), and `refine()` / `TeacherClient` receive the config itself (or a bare `RefineSettings()` /
`TeacherSettings(...)` in tests and benchmarks), so a new setting is one field with its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qihuang import rag
from qihuang.config import ConfigError, check_ranges

OFFLINE_GENERATORS = ("attribution", "section_book", "clauses", "formula", "herb", "cloze", "lexicon")


@dataclass
class RefineSettings:
    """Thresholds of the refine step (`qihuang.instruct.refine`)."""

    grounding_threshold: float = 0.3
    """Minimum grounding score (n-gram + LCS support of the answer by its passage) to keep a pair; a faithful
    modern paraphrase of a classical passage scores about 0.3–0.6, an off-passage answer below 0.15."""
    grounding_n: int = 2
    """Character n-gram size of the grounding score."""
    dedup_threshold: float = 0.85
    """MinHash Jaccard threshold above which a pair is a near duplicate of an earlier one."""
    min_answer: int = 2
    """Minimum answer length (content characters)."""
    max_answer: int = 1500
    """Maximum answer length (content characters)."""
    max_question: int = 300
    """Maximum question length (content characters)."""
    min_question: ClassVar[int] = 4
    """Minimum question length (content characters); fixed, not a setting."""
    min_cjk: ClassVar[float] = 0.5
    """Minimum share of Chinese characters in the cleaned question and answer; fixed, not a setting."""
    num_perm: ClassVar[int] = 64
    """MinHash permutations of the near-duplicate check; fixed, not a setting."""

    def __post_init__(self) -> None:
        check_ranges("instruct", self, grounding_threshold=(0.0, 1.0, False), dedup_threshold=(0.0, 1.0, False),
                     grounding_n=(1, None, False))
        if self.min_answer > self.max_answer:
            raise ConfigError(f"min_answer ({self.min_answer}) > max_answer ({self.max_answer})")


@dataclass
class TeacherSettings:
    """Connection and pacing of the teacher (`qihuang.instruct.teacher.TeacherClient`)."""

    teacher_url: str | None = None
    """Base URL of an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1); unset: offline only."""
    teacher_model: str = "gpt-4o-mini"
    """Teacher model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the teacher's API key (never logged)."""
    concurrency: int = 32
    """Teacher requests in flight at most."""
    rpm: int = 3000
    """Teacher requests per minute at most."""
    tpm: int = 2_000_000
    """Teacher tokens per minute at most (estimated before, corrected after each request)."""
    timeout: float = 60.0
    """Seconds before a teacher request times out (then retried)."""
    max_retries: int = 5
    """Retries per request on timeouts, connection errors, 429 and 5xx."""
    backoff: float = 1.0
    """Base seconds of exponential back-off (doubled each retry, with jitter)."""
    temperature: float = 0.7
    """Teacher sampling temperature."""
    max_tokens: int = 1500
    """Teacher completion token limit."""
    max_backoff: ClassVar[float] = 30.0
    """Longest back-off between retries in seconds (a server's Retry-After is capped to it too); fixed."""

    @property
    def params(self) -> dict[str, Any]:
        """Sampling parameters sent with every request (and part of the response cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def __post_init__(self) -> None:
        positive = (1, None, False)
        check_ranges("instruct", self, concurrency=positive, rpm=positive, tpm=positive, max_tokens=positive,
                     max_retries=(0, None, False), timeout=(0, None, True), backoff=(0, None, False))
        if self.teacher_url and not self.teacher_url.startswith(("http://", "https://")):
            raise ConfigError(f"teacher_url must start with http:// or https://, got {self.teacher_url!r}")


@dataclass
class InstructConfig(RefineSettings, TeacherSettings):
    """How instruction data is generated, refined, integrated and mixed (the refine thresholds and the teacher's
    settings are inherited from `RefineSettings` and `TeacherSettings`)."""

    seed: int = 0
    """Random seed (template choice, held-out split, dialogue grouping, mixing)."""
    max_passages: int | None = None
    """Use at most this many passages (spread evenly over the file, so every book is sampled), for quick runs."""
    generators: list[str] = field(default_factory=lambda: list(OFFLINE_GENERATORS))
    """Offline generators to run (attribution, section_book, clauses, formula, herb, cloze, lexicon); the teacher
    runs in addition when teacher_url is set."""
    pairs_per_passage: int = 4
    """Offline: at most this many pairs per passage (diverse task types); teacher: pairs asked per passage."""
    lexicon: str = "lexicon/tcm_terms_62k.txt"
    """TCM term list (one per line) for cloze and term→passage pairs; relative to the data root unless absolute;
    empty to disable."""
    heldout_fraction: float = 0.05
    """Share of passages whose pairs go to heldout_qa.jsonl (never to train)."""
    type_targets: list[str] = field(default_factory=list)
    """Target proportions by task type as TYPE=SHARE (e.g. 方剂组成=0.2); unnamed types share the rest."""
    max_type_share: float = 0.3
    """No task type may exceed this share of the kept train pairs (downsampled, lowest grounding first)."""
    max_category_share: float = 1.0
    """No book category may exceed this share of the kept train pairs (1.0: no cap)."""
    max_pairs: int | None = None
    """Keep at most this many train pairs (after balancing)."""
    max_turns: int = 3
    """Merge up to this many pairs of one passage into a multi-turn dialogue."""
    general_data: list[str] = field(default_factory=lambda: ["general_sft/alpaca_zh_demo_1k.json"])
    """General instruction files (Alpaca JSON/JSONL or ShareGPT JSONL), relative to the data root unless absolute."""
    general_ratio: float = 0.1
    """Share of general instructions in the final train mix (as far as the files hold enough)."""
    rag_ratio: float = 0.5
    """Share of the kept train pairs asked with retrieved passages in the user turn (built by `qihuang.rag`, the
    same layout serving uses) and answered `据《书名·篇名》：…`; the rest stay closed-book."""
    rag_missing_ratio: float = 0.15
    """Share of those records whose gold passage is left out (distractors from other books only): the answer says
    the passages do not cover the question."""
    rag_offtopic_ratio: float = 0.5
    """Share of the general (non-classics) records mixed in that are asked with the passages the retriever returns
    for them and answered that the passages do not cover the question: passages that merely share words with a
    question about cars or tax are no source (measured by eval's off-topic invented-citation rate)."""
    passages_k: int = rag.PASSAGES_K
    """Passages per record (the serving default: `qihuang serve --passages-k`)."""
    passage_chars: int = rag.PASSAGE_CHARS
    """Characters shown of each passage (the serving default: `--passage-chars`)."""
    rag_index: str | None = None
    """Passages file (or run dir) the training retriever searches; default: the stage's own passages file (the
    training books: held-out books are never shown in training)."""
    workers: int = 1
    """Worker processes for refine."""
    price_in: float = 0.15
    """Price per million prompt tokens (for the cost report)."""
    price_out: float = 0.6
    """Price per million completion tokens (for the cost report)."""
    teacher_judge: bool = False
    """Also ask the teacher to judge each kept teacher pair's support by its passage (needs teacher_url)."""
    cache_dir: Path | None = None
    """Teacher response cache (default: <stage dir>/teacher_cache); a rerun never pays twice."""

    def __post_init__(self) -> None:
        unknown = [g for g in self.generators if g not in OFFLINE_GENERATORS]
        if unknown:
            raise ConfigError(f"generators: unknown {unknown}; known: {list(OFFLINE_GENERATORS)}")
        if not self.generators and not self.teacher_url:
            raise ConfigError("generators is empty and teacher_url is unset: nothing would generate pairs")
        RefineSettings.__post_init__(self)
        TeacherSettings.__post_init__(self)
        unit, positive = (0.0, 1.0, False), (1, None, False)
        check_ranges("instruct", self, heldout_fraction=unit, rag_ratio=unit, rag_missing_ratio=unit,
                     rag_offtopic_ratio=unit, max_type_share=(0.0, 1.0, True), max_category_share=(0.0, 1.0, True),
                     passages_k=(1, 10, False), passage_chars=(20, None, False), pairs_per_passage=positive,
                     max_turns=positive, workers=positive)
        if not 0.0 <= self.general_ratio < 1.0:  # half-open: check_ranges' upper bound is inclusive
            raise ConfigError(f"general_ratio must be in [0, 1), got {self.general_ratio}")
        if self.teacher_judge and not self.teacher_url:
            raise ConfigError("teacher_judge needs teacher_url")
        self.targets()  # validates type_targets

    def targets(self) -> dict[str, float]:
        """type_targets parsed into {type: share}."""
        out: dict[str, float] = {}
        for item in self.type_targets:
            name, sep, share = item.partition("=")
            try:
                value = float(share)
            except ValueError:
                value = -1.0
            if not sep or not name.strip() or not 0.0 <= value <= 1.0:
                raise ConfigError(f"type_targets: expected TYPE=SHARE with SHARE in [0, 1], got {item!r}")
            out[name.strip()] = value
        if sum(out.values()) > 1.0 + 1e-6:
            raise ConfigError(f"type_targets: shares sum to {sum(out.values()):.3f} > 1")
        return out
