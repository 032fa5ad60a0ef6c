"""Evaluation (#7): bits per character, multiple-choice exams, open QA, side-by-side reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qihuang import answer_guard as answer_guard_mod
from qihuang import rag
from qihuang.config import ConfigError, check_ranges
from qihuang.instruct.settings import OFFLINE_GENERATORS
from qihuang.runs import StageDir


@dataclass
class EvalConfig:
    """What to evaluate and how much of it."""

    seed: int = 0
    """Seed of the bootstrap resampling (results are otherwise deterministic: greedy decoding, file order)."""
    bpc_max_chars: int = 20000
    """Characters of held-out text scored per model (first passages in file order; 0 skips bpc)."""
    bpc_window: int = 512
    """Tokens per bpc window."""
    bpc_stride: int = 256
    """Tokens a bpc window moves on (< window); each later window keeps window - stride tokens of context."""
    bpc_models: list[str] = field(default_factory=lambda: ["*"])
    """Models whose bits/char is scored: labels, `first` (the base), `last` (the final model) or `*` (all). The
    demo scores base and CPT model (what continual pretraining changed), not its SFT model."""
    mcq_files: list[str] = field(default_factory=lambda: ["eval/tcmchat_choice/choice_herb_500.csv"])
    """Multiple-choice files (CSV / JSONL / JSON): a path, or a name under the shared data folder; append `:N`
    to score only the first N valid rows of that file."""
    mcq_limit: int = 100
    """Valid rows scored per multiple-choice file when the file has no `:N` (0 = all)."""
    mcq_shots: int = 0
    """Solved examples before each question (k-shot); needs --mcq-fewshot-file."""
    mcq_fewshot_file: str | None = None
    """Dev file (or folder of dev files matched by file name, e.g. eval/cmmlu/dev) the k-shot examples come
    from; its path must contain `dev` and it must not be an evaluated file."""
    mcq_scoring: Literal["loglik", "letter", "generate", "both"] = "loglik"
    """loglik: option log-likelihood, all variants (base models); letter: only the answer letter's probability
    (one forward per batch, fastest); generate: greedy chat answer + letter extraction; both: loglik + generate."""
    mcq_formulation: Literal["cf", "mcf"] = "cf"
    """How log-likelihood scoring asks: cf (cloze: the question alone, each option's text scored as the answer;
    OLMES recommends it for small models, and it is the cheaper prompt) or mcf (the options listed in the prompt,
    each scored as its answer line `B. 清热泻火`). Letter scoring and generation always list the options."""
    mcq_metric: Literal["ll_char", "ll", "ll_tok", "letter", "generate"] | None = None
    """Variant reported as `accuracy`: log-likelihood of the answer line per character (ll_char), summed (ll), per
    token (ll_tok), the answer letter's probability (letter), or generation (generate); all computed ones are in
    `variants`. Default: ll_char for loglik/both, else the scoring's own."""
    mcq_batch_size: int = 4
    """Questions per forward. Each question is one row: its prompt with all its options packed behind it (tree
    attention mask), so the prompt runs once for all options. On 2 CPU cores 2–4 rows per forward amortise the
    weight reads (~100 ms per forward at any size) best: 3.1–3.5 vs 2.5 questions/s for 1."""
    mcq_gen_tokens: int = 16
    """New tokens generated per question when scoring by generation."""
    mcq_models: list[str] = field(default_factory=lambda: ["first", "last"])
    """Models whose MCQ files are scored: labels, `first` (the base), `last` (the final model) or `*` (all);
    MCQ is the slowest part, so by default only base and final model (give them >= 300 rows each)."""
    heldout_qa_n: int = 150
    """Questions of the held-out-book QA set: the offline generators run over the corpus' held-out books (never
    trained on) and sampled balanced by question type; written to the eval folder as heldout_books_qa.jsonl
    (0 = no such set)."""
    heldout_qa_generators: list[str] = field(default_factory=lambda: list(OFFLINE_GENERATORS))
    """Offline generators the held-out-book QA set is drawn from (attribution, section_book, clauses, formula,
    herb, cloze, lexicon)."""
    lexicon: str = "lexicon/tcm_terms_62k.txt"
    """TCM term list for the cloze and term generators; relative to the data root unless absolute; empty (or not
    found) leaves those generators without questions."""
    qa_rows: list[str] = field(default_factory=lambda: ["base:closed", "base:rag", "*:rag", "last:closed"])
    """Rows of the held-out-book QA table, each `MODEL:CONDITION`. MODEL: a model label, `base`/`first` (the
    first model), `last` (the final model) or `*` (every model); CONDITION: `closed` (the question alone) or `rag`
    (the top passages_k passages of the index before it, built by `rag.rag_messages` as serving does). The
    default is base closed-book, base + retrieval, every stage + retrieval, final model closed-book. Retrieval rows
    are skipped when the stage has no index."""
    passages_k: int = rag.PASSAGES_K
    """Passages retrieved per question and put into the prompt (as serve's RetrievalConfig.passages_k)."""
    passage_chars: int = rag.PASSAGE_CHARS
    """Characters of each passage shown in the prompt (as serve's RetrievalConfig.passage_chars)."""
    relevance_gate: bool = True
    """Retrieval rows decline questions the classics do not speak to (as serve's RetrievalConfig.relevance_gate)."""
    cite_first: bool = True
    """Retrieval rows' answers open with the best-matching passage's citation (as serve's
    RetrievalConfig.cite_first)."""
    answer_guard: bool = True
    """Rows score the answers users see: degenerate continuations cut, empty answers quoting their cited passage
    (as serve's RetrievalConfig.answer_guard); how often the guard acted is reported per row."""
    answer_support: float = answer_guard_mod.MIN_SUPPORT
    """With answer_guard: retrieval answers are cut before their first sentence that the passages shown do not
    support (as serve's RetrievalConfig.answer_support; 0 = off)."""
    verbatim_quotes: bool = True
    """Retrieval rows' quotations copy the passages shown verbatim (`qihuang.quotes`; as serve's
    RetrievalConfig.verbatim_quotes)."""
    qa_batch_size: int = 16
    """Questions answered per batched forward at most (`qihuang.decoding.generate_batch`)."""
    qa_batch_tokens: int = 0
    """KV positions the questions decoded together may hold (rows x the widest prompt + qa_max_new_tokens; 0 = no
    bound): with a large qa_batch_size, short closed-book prompts decode many rows at once, long retrieval prompts
    fewer, in about the same memory."""
    offtopic: bool = True
    """Also ask 30 off-topic questions (cars, tax, programming, sports …) with retrieval, for every model with a
    retrieval row: rates of invented citations and of declining."""
    qa_limit: int = 20
    """Open questions answered per QA file (0 = all)."""
    qa_files: list[str] = field(default_factory=list)
    """Extra open-QA files besides the run's held-out QA, e.g. eval/cmb_clin/CMB-test-qa.json (`:N` suffix as
    for mcq_files)."""
    qa_max_new_tokens: int = 96
    """New tokens generated per open question (greedy)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals."""

    def __post_init__(self) -> None:
        check_ranges("eval", self, answer_support=(0, 1, False))
        for name in ("bpc_max_chars", "mcq_limit", "mcq_shots", "qa_limit", "heldout_qa_n", "qa_batch_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mcq_batch_size", "mcq_gen_tokens", "qa_max_new_tokens", "qa_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bpc_window < 2 or not 1 <= self.bpc_stride < self.bpc_window:
            # stride == window would leave the first token of every later window without context
            raise ConfigError(f"need bpc_window >= 2 and 1 <= bpc_stride < bpc_window "
                              f"(got {self.bpc_window}, {self.bpc_stride})")
        self._check_rows()
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if self.mcq_shots and not self.mcq_fewshot_file:
            raise ConfigError("mcq_shots > 0 needs mcq_fewshot_file (a dev file: few-shot examples never come "
                              "from an evaluation set)")
        if self.mcq_fewshot_file:
            if "dev" not in self.mcq_fewshot_file.lower():
                raise ConfigError(f"mcq_fewshot_file {self.mcq_fewshot_file!r}: few-shot examples must come from a "
                                  "dev file (its path must contain `dev`), never from an evaluation set")
            stripped = {f.rsplit(":", 1)[0] if f.rsplit(":", 1)[-1].isdigit() else f for f in self.mcq_files}
            if self.mcq_fewshot_file in stripped:
                raise ConfigError(f"mcq_fewshot_file {self.mcq_fewshot_file!r} is also an evaluated file")
        available = {"loglik": {"ll", "ll_char", "ll_tok", "letter"}, "letter": {"letter"},
                     "generate": {"generate"}, "both": {"ll", "ll_char", "ll_tok", "letter", "generate"}}
        if self.mcq_formulation == "cf":
            for kind in ("loglik", "both"):
                available[kind] = available[kind] - {"letter"}
        if self.mcq_metric is not None and self.mcq_metric not in available[self.mcq_scoring]:
            raise ConfigError(f"mcq_metric={self.mcq_metric} is not computed by mcq_scoring={self.mcq_scoring}, "
                              f"mcq_formulation={self.mcq_formulation} "
                              f"(it gives {sorted(available[self.mcq_scoring])})")

    def _check_rows(self) -> None:
        from qihuang.evaluate.conditions import CONDITIONS
        from qihuang.serve.settings import RetrievalConfig

        RetrievalConfig(passages_k=self.passages_k, passage_chars=self.passage_chars)  # serve's own range checks
        for spec in self.qa_rows:
            who, sep, cond = str(spec).rpartition(":")
            if not sep or not who or cond not in CONDITIONS:
                raise ConfigError(f"qa_rows: {spec!r} is not " + " or ".join(f"MODEL:{c}" for c in CONDITIONS)
                                  + " (MODEL a label, base, first, last or *)")
        for name in ("mcq_models", "bpc_models"):
            if any(not str(m).strip() for m in getattr(self, name)):
                raise ConfigError(f"{name}: empty entry (give labels, first, last or *)")
        unknown = [g for g in self.heldout_qa_generators if g not in OFFLINE_GENERATORS]
        if unknown:
            raise ConfigError(f"heldout_qa_generators: unknown {unknown}; known: {list(OFFLINE_GENERATORS)}")

    @property
    def metric(self) -> str:
        """The MCQ variant reported as accuracy (mcq_metric, or the scoring's default)."""
        if self.mcq_metric:
            return self.mcq_metric
        return {"letter": "letter", "generate": "generate"}.get(self.mcq_scoring, "ll_char")


def evaluate_models(cfg: EvalConfig, models: dict[str, Path], heldout: Path | None, heldout_qa: Path | None,
                    out: StageDir, index: Path | None = None) -> dict[str, Any]:
    """Evaluate each labelled model dir (bpc, MCQ, QA); write results.json, report.md and charts into out.path.

    `heldout` (the corpus' held-out books) gives bpc and the held-out-book QA set; `heldout_qa` is an extra QA file
    answered closed-book; `index` (a passages file or run dir, `PassageIndex.open`) enables the retrieval rows.
    Finished parts are cached under out.path/parts/, so a killed stage resumes with the next unfinished part.
    """
    from qihuang.evaluate.runner import run_all

    return run_all(cfg, models, heldout, heldout_qa, out, index)


__all__ = ["EvalConfig", "evaluate_models"]
