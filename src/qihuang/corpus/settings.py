"""`CorpusConfig`: every knob of the corpus stage, with a docstring per field (CLI help) and cross-field checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qihuang.config import ConfigError

DEFAULT_HELDOUT: list[str] = [
    "伤寒明理论",  # 伤寒金匮
    "时病论",  # 温病
    "本草思辨录",  # 本草
    "针灸问对",  # 针灸推拿
    "素问玄机原病式",  # 医经
    "洄溪医案",  # 医案医话
    "外科全生集",  # 临证各科
]
"""Medium-size books (30-110 k characters) of seven categories whose text is not embedded whole in other books."""

DEFAULT_UPSTREAM = "https://raw.githubusercontent.com/xiaopangxia/TCM-Ancient-Books/db0155d"
"""Where `qihuang corpus fetch` downloads the raw books from (a manifest `MANIFEST.sha256` is expected there)."""


@dataclass
class CorpusConfig:
    """Where the classics come from and how they become passages."""

    source: Path | None = None
    """Directory (or single file) of raw books: .txt (GB18030/GBK/UTF-8/UTF-16 classics or plain text), .md,
    .jsonl; default $QIHUANG_DATA_ROOT/classics, else ../shared/data/classics."""
    max_books: int | None = None
    """Quick runs: keep the held-out books plus this many others, spread evenly across categories."""
    heldout_books: list[str] = field(default_factory=lambda: list(DEFAULT_HELDOUT))
    """Books (title or file name) whose passages go to heldout.jsonl and never to training."""
    passage_chars: int = 400
    """Target passage length in characters (passages end at sentence or paragraph boundaries)."""
    max_passage_chars: int = 800
    """Hard upper bound on passage length; a longer sentence is cut at a comma or, failing that, anywhere."""
    min_chars: int = 24
    """Passages shorter than this (Chinese characters) are rejected as too short."""
    min_cjk_ratio: float = 0.5
    """Passages with a smaller share of Chinese characters are rejected as mostly non-Chinese."""
    seed: int = 0
    """Seed for anything random (MinHash permutations)."""
    repair: bool = True
    """Undo the words the upstream's own conversion wrote in the classics' place (香港脚 for 脚气:
    `normalise.REPAIRS`) and restore the glyph GBK lost in 㕮咀 (`normalise.MISSING_FU`), in the text and the
    section names."""
    t2s: bool = False
    """Convert traditional to simplified characters with OpenCC (off: the body keeps its characters)."""
    punctuation: Literal["fullwidth", "keep"] = "fullwidth"
    """fullwidth: ASCII , ; : ? ! ( ) next to Chinese and the ratio colon ∶ become their full-width forms."""
    collapse_spaces: bool = True
    """Collapse runs of spaces/ideographic spaces inside a line to one space (a space often stands for a
    missing glyph, so single spaces are kept)."""
    notes: Literal["annotate", "inline", "drop"] = "annotate"
    """\\x…\\x spans: annotate = move to `notes` (body reads without them); inline = keep text in the body,
    drop only the markers; drop = discard them."""
    dedup: bool = True
    """Remove exact and near-duplicate passages (the earliest book keeps the passage)."""
    near_dup_threshold: float = 0.8
    """MinHash LSH Jaccard threshold over character shingles for near-duplicates."""
    shingle: int = 5
    """Character n-gram size for MinHash shingles."""
    minhash_perm: int = 64
    """Number of MinHash permutations."""
    category_rules: Path | None = None
    """YAML/JSON file {category: [title substrings]} tried before the built-in rule table."""
    category_map: list[str] = field(default_factory=list)
    """Explicit overrides 'TITLE=CATEGORY' (exact title or file name)."""
    library: bool = True
    """Also write library.jsonl: the passages of every book of the source (held-out and unselected books too, no
    dedup across books) for the retrieval index; a reader may consult any book. Off keeps tiny runs fast."""
    write_books: bool = True
    """Also write the cleaned books (books/<file>.txt) that passage spans refer to."""
    workers: int = 2
    """Processes used to read and parse books (1 = in-process)."""
    upstream: str = DEFAULT_UPSTREAM
    """Base URL `qihuang corpus fetch` downloads from."""

    def __post_init__(self) -> None:
        if self.max_books is not None and self.max_books < 0:
            raise ConfigError(f"max_books must be >= 0, got {self.max_books}")
        if self.passage_chars < 32:
            raise ConfigError(f"passage_chars must be >= 32, got {self.passage_chars}")
        if self.max_passage_chars < self.passage_chars:
            raise ConfigError(
                f"max_passage_chars ({self.max_passage_chars}) must be >= passage_chars ({self.passage_chars})")
        if not 0 <= self.min_chars < self.passage_chars:
            raise ConfigError(f"min_chars must be in [0, passage_chars), got {self.min_chars}")
        if not 0.0 <= self.min_cjk_ratio <= 1.0:
            raise ConfigError(f"min_cjk_ratio must be in [0, 1], got {self.min_cjk_ratio}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.shingle < 1:
            raise ConfigError(f"shingle must be >= 1, got {self.shingle}")
        if self.minhash_perm < 16:
            raise ConfigError(f"minhash_perm must be >= 16, got {self.minhash_perm}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        for item in self.category_map:
            if "=" not in item:
                raise ConfigError(f"category_map entry {item!r}: expected TITLE=CATEGORY")
        if len(set(self.heldout_books)) != len(self.heldout_books):
            raise ConfigError(f"heldout_books has duplicates: {self.heldout_books}")


def default_source() -> Path:
    """`classics/` of the data folder ($QIHUANG_DATA_ROOT, else ../shared/data; an earlier version's $QIHUANG_DATA
    naming the books folder itself is still honoured); a ConfigError says where it looked and how to get the corpus."""
    from qihuang.config import DATA_ROOT_ENV, data_root, legacy_env

    looked: list[str] = []
    legacy = legacy_env("QIHUANG_DATA")
    if legacy:
        looked.append(f"$QIHUANG_DATA={legacy}")
        if Path(legacy).exists():
            return Path(legacy)
    root = data_root()
    if root is not None:
        cand = root / "classics"
        looked.append(str(cand))
        if cand.exists():
            return cand
    else:
        looked.append(f"${DATA_ROOT_ENV}/classics ({DATA_ROOT_ENV} unset, no ../shared/data)")
    raise ConfigError(
        "no corpus source: looked in " + "; ".join(looked)
        + f". Pass --source DIR, set {DATA_ROOT_ENV} to the data folder (holding classics/), or download the books "
        "with `qihuang corpus fetch`."
    )


def resolve_source(cfg: CorpusConfig) -> Path:
    """The directory or file to read books from."""
    if cfg.source is not None:
        if not Path(cfg.source).exists():
            raise ConfigError(f"source {cfg.source} does not exist; `qihuang corpus fetch --dest DIR` downloads "
                              "the public corpus")
        return Path(cfg.source)
    return default_source()
