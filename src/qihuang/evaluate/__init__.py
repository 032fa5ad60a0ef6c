"""Evaluation (#7): bits per character, multiple-choice exams, open QA, side-by-side reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qihuang.config import ConfigError
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
        for name in ("bpc_max_chars", "mcq_limit", "mcq_shots", "qa_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mcq_batch_size", "mcq_gen_tokens", "qa_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bpc_window < 2 or not 1 <= self.bpc_stride < self.bpc_window:
            # stride == window would leave the first token of every later window without context
            raise ConfigError(f"need bpc_window >= 2 and 1 <= bpc_stride < bpc_window "
                              f"(got {self.bpc_window}, {self.bpc_stride})")
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


    @property
    def metric(self) -> str:
        """The MCQ variant reported as accuracy (mcq_metric, or the scoring's default)."""
        if self.mcq_metric:
            return self.mcq_metric
        return {"letter": "letter", "generate": "generate"}.get(self.mcq_scoring, "ll_char")


def evaluate_models(cfg: EvalConfig, models: dict[str, Path], heldout: Path | None, heldout_qa: Path | None,
                    out: StageDir) -> dict[str, Any]:
    """Evaluate each labelled model dir (bpc, MCQ, QA); write results.json, report.md and charts into out.path.

    Finished models are cached under out.path/models/, so a killed stage resumes with the next model.
    """
    from qihuang.evaluate.runner import run_all

    return run_all(cfg, models, heldout, heldout_qa, out)


__all__ = ["EvalConfig", "evaluate_models"]
