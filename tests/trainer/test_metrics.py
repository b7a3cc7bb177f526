"""Hand-checkable cases for the generation metrics and the gate."""

from __future__ import annotations

import math

import pytest

from trainer import metrics as m
from trainer.config import EvalConfig


def test_normalize_is_squad_style() -> None:
    assert m.normalize("  The Cat, sat on   a MAT!\n") == "cat sat on mat"
    assert m.normalize("An apple.") == "apple"
    # Articles are whole words only: "theory" and "answer" keep their letters.
    assert m.normalize("theory answer") == "theory answer"
    assert m.normalize("") == ""


def test_exact_match_uses_normalisation() -> None:
    assert m.exact_match("The answer is 5.", "answer is 5") == 1.0
    assert m.exact_match("answer is 6", "answer is 5") == 0.0
    assert m.exact_match("", "") == 1.0
    assert m.exact_match("late", "LATE!") == 1.0


def test_lcs_length_known_sequences() -> None:
    assert m.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert m.lcs_length("AGGTAB", "GXTXAYB") == 4  # GTAB
    assert m.lcs_length("", "abc") == 0
    assert m.lcs_length("abc", "abc") == 3
    assert m.lcs_length(["a", "b"], ["c", "d"]) == 0


def test_rouge_l_f1() -> None:
    # LCS("w x y z", "w y z") = 3: P = 3/4, R = 3/3 (no a/an/the: those are normalised away).
    pred, ref = "w x y z", "w y z"
    p, r = 3 / 4, 3 / 3
    assert m.rouge_l(pred, ref) == pytest.approx(2 * p * r / (p + r))
    assert m.rouge_l("one two", "one two") == 1.0
    assert m.rouge_l("one two", "three four") == 0.0
    assert m.rouge_l("", "") == 1.0
    assert m.rouge_l("", "x") == 0.0
    # Order matters for LCS: reversed words share only one in-order token.
    assert m.rouge_l("c b a2", "a2 b c") == pytest.approx(1 / 3)


def test_bleu_identical_is_one_and_disjoint_is_zero() -> None:
    refs = ["the quick brown fox jumps over the lazy dog", "hello world again and again"]
    assert m.bleu(refs, refs) == pytest.approx(1.0)
    assert m.bleu(["alpha beta gamma delta", "x y"], ["one two three four", "z w"]) == 0.0
    # Short answers with no 4-grams still score 1 when identical (smoothing of n>1).
    assert m.bleu(["5", "late"], ["5", "late"]) == pytest.approx(1.0)


def test_bleu_hand_computed_and_brevity_penalty() -> None:
    # pred "a1 b1 c1", ref "a1 b1 c1 d1 e1 f1": p1=1, p2=(2+1)/(2+1)=1, p3=(1+1)/(1+1)=1,
    # no 4-gram in the output (order left out), so BLEU = BP = exp(1 - 6/3).
    assert m.bleu(["a1 b1 c1"], ["a1 b1 c1 d1 e1 f1"]) == pytest.approx(math.exp(1 - 2))
    # pred "a1 x1 b1 y1", ref "a1 b1 c1 d1": p1 = 2/4, p2 = (0+1)/(3+1), p3 = 1/3, p4 = 1/2,
    # equal lengths so BP = 1.
    expected = math.exp((math.log(0.5) + math.log(0.25) + math.log(1 / 3) + math.log(0.5)) / 4)
    assert m.bleu(["a1 x1 b1 y1"], ["a1 b1 c1 d1"]) == pytest.approx(expected)
    # One-word outputs, 1 of 4 right: only unigrams count, BLEU = BP * p1 = exp(1 - 8/4) * 1/4
    # (not BP * (1/4)**(1/4), which treating the absent 2..4-grams as perfect would give).
    preds, refs = ["x", "y", "z", "w"], ["x q", "r s", "t u", "v o"]
    assert m.bleu(preds, refs) == pytest.approx(math.exp(1 - 2) * 0.25)
    # Clipping: repeating a matching word does not earn extra credit.
    assert m.bleu(["k k k k"], ["k m n o"]) < m.bleu(["k m n o"], ["k m n o"])
    with pytest.raises(ValueError):
        m.bleu(["a"], [])


def test_perplexity_and_overflow_guard() -> None:
    assert m.perplexity(0.0) == 1.0
    assert m.perplexity(math.log(7.0)) == pytest.approx(7.0)
    huge = m.perplexity(1e6)
    assert math.isfinite(huge) and huge == math.exp(m.MAX_LOG_PERPLEXITY)
    assert math.isnan(m.perplexity(math.nan))


def test_generation_metrics_means() -> None:
    out = m.generation_metrics(["late", "x y"], ["late", "x z"])
    assert out["exact_match"] == 0.5
    assert out["rouge_l"] == pytest.approx((1.0 + 0.5) / 2)
    assert 0.0 < out["bleu"] < 1.0
    assert m.generation_metrics([], []) == {"exact_match": 0.0, "rouge_l": 0.0, "bleu": 0.0}


def test_gate_lower_is_better() -> None:
    g = m.gate("eval_loss", base=3.0, tuned=2.0, required=0.5)
    assert g["improvement"] == pytest.approx(1.0) and g["passed"]
    g = m.gate("perplexity", base=10.0, tuned=9.9, required=0.5)
    assert g["improvement"] == pytest.approx(0.1) and not g["passed"]
    # Getting worse is a negative improvement: fails even a zero requirement.
    assert not m.gate("eval_loss", base=2.0, tuned=2.5, required=0.0)["passed"]


def test_gate_higher_is_better() -> None:
    g = m.gate("exact_match", base=0.1, tuned=0.6, required=0.3)
    assert g["improvement"] == pytest.approx(0.5) and g["passed"]
    assert not m.gate("rouge_l", base=0.5, tuned=0.4, required=0.0)["passed"]
    assert m.gate("bleu", base=0.5, tuned=0.5, required=0.0)["passed"]  # >= is inclusive


def test_gate_disabled_and_nan() -> None:
    g = m.gate("exact_match", base=0.9, tuned=0.1, required=-1.0)
    assert g["passed"] and not g["enabled"] and "disabled" in g["reason"]
    assert not m.gate("eval_loss", base=math.nan, tuned=1.0, required=0.0)["passed"]
    with pytest.raises(ValueError):
        m.gate("accuracy", 0.0, 1.0, 0.0)


def test_gate_metrics_match_config_choices() -> None:
    # EvalConfig refuses anything outside GATE_METRICS and accepts every one of them.
    for name in m.GATE_METRICS:
        EvalConfig(gate_metric=name)
    from trainer.config import ConfigError

    with pytest.raises(ConfigError):
        EvalConfig(gate_metric="accuracy")
