"""Hand-checkable cases for the generation metrics and the gate."""

from __future__ import annotations

import math

import pytest

from trainer import metrics as m
from trainer.config import EvalConfig


def test_normalize_keeps_what_carries_meaning() -> None:
    # Case, spacing and one final sentence mark go; nothing inside the answer does.
    assert m.normalize("  The Cat sat   on a MAT!\n") == "the cat sat on a mat"
    assert m.normalize("Paris.") == "paris"
    assert m.normalize("Really?!") == "really"
    assert m.normalize("-5") == "-5"
    assert m.normalize("3.5") == "3.5"
    assert m.normalize("C++") == "c++"
    assert m.normalize('{"a": 1}') == '{"a": 1}'
    # NFKC: full-width digits and the ligature compare equal to their plain forms.
    assert m.normalize("\uff11\uff12 \ufb01le") == "12 file"
    assert m.normalize("") == ""


def test_exact_match_signs_decimals_symbols_count() -> None:
    # Each of these matched under the SQuAD normalisation (punctuation deleted).
    assert m.exact_match("-5", "5") == 0.0
    assert m.exact_match("3.5", "35") == 0.0
    assert m.exact_match("C++", "C") == 0.0
    assert m.exact_match("$10", "10") == 0.0
    assert m.exact_match('{"quantity": 3}', "quantity 3") == 0.0
    # Articles are words: "a cat" is not "the cat".
    assert m.exact_match("a cat", "the cat") == 0.0
    # Differences that carry no meaning still match.
    assert m.exact_match("Paris.", "paris") == 1.0
    assert m.exact_match("  -5 ", "-5") == 1.0
    assert m.exact_match("late", "LATE!") == 1.0
    assert m.exact_match("New   York", "new york") == 1.0


def test_exact_match_empty_prediction_never_matches() -> None:
    assert m.exact_match("", "A") == 0.0  # was 1.0: "a" was dropped as an article
    assert m.exact_match("", "The") == 0.0
    assert m.exact_match("   ", ".") == 0.0  # "." normalises to "" but is not blank
    assert m.exact_match(".", "") == 0.0
    assert m.exact_match("", "") == 1.0
    assert m.exact_match(" ", "\n") == 1.0


def test_lcs_length_known_sequences() -> None:
    assert m.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert m.lcs_length("AGGTAB", "GXTXAYB") == 4  # GTAB
    assert m.lcs_length("", "abc") == 0
    assert m.lcs_length("abc", "abc") == 3
    assert m.lcs_length(["a", "b"], ["c", "d"]) == 0


def test_rouge_tokens_are_rouge_scores() -> None:
    # rouge-score: lowercase, every non-alphanumeric run separates (so "3.5" is two tokens).
    assert m.rouge_tokens("It's 3.5% of C++!") == ["it", "s", "3", "5", "of", "c"]
    assert m.rouge_tokens('{"name": "Ana Ruiz"}') == ["name", "ana", "ruiz"]
    assert m.rouge_tokens("...") == []
    # Letters outside ASCII stay letters (rouge-score would delete them).
    assert m.rouge_tokens("Café Zürich") == ["café", "zürich"]


def test_rouge_l_published_cases() -> None:
    # rouge-score's own tests (rouge_scorer_test.py): score(target, prediction).
    # testRougeLConsecutive: target "testing one two", prediction "testing one": F = 4/5.
    assert m.rouge_l("testing one", "testing one two") == pytest.approx(4 / 5)
    # testRougeLNonConsecutive: prediction "testing two": LCS 2, F = 4/5.
    assert m.rouge_l("testing two", "testing one two") == pytest.approx(4 / 5)
    # testRougeEmpty: an empty side scores 0.
    assert m.rouge_l("", "testing one two") == 0.0
    assert m.rouge_l("testing one two", "") == 0.0


def test_rouge_l_f1_by_hand() -> None:
    # LCS("w x y z", "w y z") = 3: P = 3/4, R = 3/3.
    p, r = 3 / 4, 3 / 3
    assert m.rouge_l("w x y z", "w y z") == pytest.approx(2 * p * r / (p + r))
    assert m.rouge_l("one two", "One, two.") == 1.0
    assert m.rouge_l("one two", "three four") == 0.0
    # Order matters for LCS: reversed words share only one in-order token.
    assert m.rouge_l("c b a2", "a2 b c") == pytest.approx(1 / 3)
    # Partial credit where exact match gives none: one wrong field of a JSON answer.
    ref = '{"name": "Ana Ruiz", "quantity": 3, "city": "Porto"}'
    pred = '{"name": "Ana Ruiz", "quantity": 2, "city": "Porto"}'
    assert m.exact_match(pred, ref) == 0.0
    assert m.rouge_l(pred, ref) == pytest.approx(6 / 7)  # 6 of 7 tokens in order


def test_tokenize_13a_matches_sacrebleu() -> None:
    # sacreBLEU 13a: punctuation split off (not the apostrophe), except . and , between
    # digits; a dash after a digit. Expected tokens checked against sacrebleu 2.5.1.
    assert m.tokenize_13a("It wasn't 3.5-fold.") == ["It", "wasn't", "3.5", "-", "fold", "."]
    assert m.tokenize_13a("1,000 items, (ok)") == ["1,000", "items", ",", "(", "ok", ")"]
    assert m.tokenize_13a("a &amp; b &lt;c&gt;") == ["a", "&", "b", "<", "c", ">"]
    assert m.tokenize_13a("line-\nbreak\nhere  ") == ["linebreak", "here"]
    assert m.tokenize_13a("") == []


# sacreBLEU's README example, also in its test suite (test_bleu.py, test_corpus_bleu_cases):
# corpus_bleu(HYPS, [REFS_A, REFS_B]).score == 48.530827 with the default settings
# (BLEU = 48.53 82.4/50.0/45.5/37.5, BP = 0.943, hyp_len 17, ref_len 18).
SACREBLEU_HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACREBLEU_REFS_A = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
SACREBLEU_REFS_B = [
    "The dog had bit the man.",
    "No one was surprised.",
    "The man had bitten the dog.",
]


def test_bleu_matches_sacrebleu_published_example() -> None:
    refs = [list(pair) for pair in zip(SACREBLEU_REFS_A, SACREBLEU_REFS_B, strict=True)]
    assert m.bleu(SACREBLEU_HYPS, refs) * 100 == pytest.approx(48.530827, abs=1e-6)
    # Empty hypotheses are scored, not dropped: 0 (the same test suite).
    assert m.bleu(["", "", ""], refs) == 0.0


def test_bleu_sacrebleu_test_suite_cases() -> None:
    # test_raw_bleu_cases / test_case_effective_order, whose smoothing (floor 0.01) only
    # matters for zero-match orders, which these cases do not have or score 0 anyway.
    assert m.bleu(["this is a test"], ["this is a test"]) == pytest.approx(1.0)
    assert m.bleu(["this is a test", "another test"], ["ref1", "ref2"]) == 0.0
    # test_case_scoring: compute_bleu([9, 7, 5, 3], [10, 8, 6, 4], 11, 11) = 0.8375922397.
    assert m.bleu_from_stats([9, 7, 5, 3], [10, 8, 6, 4], 11, 11) == pytest.approx(
        0.8375922397, abs=1e-9
    )


def test_bleu_exp_smoothing_and_brevity_by_hand() -> None:
    # pred "a1 x1 b1 y1" vs ref "a1 b1 c1 d1": matches 2/4, 0/3, 0/2, 0/1. The k-th order
    # without a match counts as 1 / (2**k * total): 1/6, 1/8, 1/8. Equal lengths: BP 1.
    expected = math.exp((math.log(0.5) + math.log(1 / 6) + math.log(1 / 8) + math.log(1 / 8)) / 4)
    assert m.bleu(["a1 x1 b1 y1"], ["a1 b1 c1 d1"]) == pytest.approx(expected)
    # pred shorter than ref: BP = exp(1 - 6/4); all 4 orders match fully.
    assert m.bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(1 - 6 / 4))
    # No 4-gram anywhere in the outputs: sacreBLEU scores 0 (no effective order).
    assert m.bleu(["a1 b1 c1"], ["a1 b1 c1"]) == 0.0
    assert m.bleu(["5", "late"], ["5", "late"]) == 0.0
    # Clipping: repeating a matching word does not earn extra credit.
    assert m.bleu(["k k k k"], ["k m n o"]) < m.bleu(["k m n o"], ["k m n o"])
    # Case-sensitive, as sacreBLEU's default.
    assert m.bleu(["The cat sat down"], ["the cat sat down"]) < 1.0
    with pytest.raises(ValueError):
        m.bleu(["a"], [])
    with pytest.raises(ValueError):
        m.bleu(["a"], [[]])


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
    assert out["bleu"] == 0.0  # no 4-gram in any output (sacreBLEU's rule)
    long = m.generation_metrics(["a b c d e", "p q r s t"], ["a b c d e", "p q r s u"])
    assert long["exact_match"] == 0.5 and 0.5 < long["bleu"] < 1.0
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
