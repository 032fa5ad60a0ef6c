"""grounding_score: supported answers score high, fabricated ones low; bit-parallel LCS equals the DP."""

from __future__ import annotations

import random

from qihuang.instruct.grounding import grounding_score, lcs_coverage, lcs_length, lcs_length_dp, ngram_coverage

PASSAGE = "浮脉者，举之有余，按之不足，如水漂木也。浮而有力为表实，浮而无力为表虚。浮紧者伤寒，浮缓者伤风。"


def test_supported_answer_scores_high() -> None:
    assert grounding_score("浮脉举之有余，按之不足；浮而有力为表实。", PASSAGE) > 0.8


def test_fabricated_answer_scores_low() -> None:
    assert grounding_score("该病主要依靠现代实验室检测确诊，并配合抗生素治疗。", PASSAGE) < 0.15


def test_paraphrase_in_between() -> None:
    s = grounding_score("脉象浮而无力的，属于表虚；浮紧的是伤寒。", PASSAGE)
    assert 0.3 < s < 0.9


def test_punctuation_and_whitespace_ignored() -> None:
    a = grounding_score("浮而有力为表实", PASSAGE)
    b = grounding_score("  浮而有力，为表实！！ ", PASSAGE)
    assert a == b == 1.0


def test_bounds_and_empty() -> None:
    assert grounding_score("", PASSAGE) == 0.0
    assert grounding_score("浮脉", "") == 0.0
    assert grounding_score(PASSAGE, PASSAGE) == 1.0
    for n in (1, 2, 3):
        assert 0.0 <= grounding_score("浮脉者举之有余今人不知", PASSAGE, n) <= 1.0


def test_order_matters_for_lcs_not_for_ngrams() -> None:
    forward = "举之有余按之不足"
    backward = "按之不足举之有余"
    assert ngram_coverage(forward, PASSAGE) == 1.0 and ngram_coverage(backward, PASSAGE) > 0.8
    assert lcs_coverage(forward, PASSAGE) == 1.0 and lcs_coverage(backward, PASSAGE) < 0.7


def test_bit_parallel_lcs_matches_dp() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("甲乙丙丁戊") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("甲乙丙丁戊己庚") for _ in range(rng.randint(0, 120)))
        assert lcs_length(a, b) == lcs_length_dp(a, b)
