"""Text-generation metrics and the base-vs-tuned gate (pure Python, no heavy imports).

Definitions, so that scores are comparable between runs:

* ``normalize``: SQuAD-style: lowercase, drop punctuation, drop the articles a/an/the,
  collapse whitespace. ``exact_match``, ``rouge_l`` and ``bleu`` all score these normalised
  word tokens.
* ``exact_match``: 1.0 when the normalised strings are equal, else 0.0 (averaged over rows).
* ``rouge_l``: ROUGE-L F1 from the longest common subsequence of tokens (averaged over rows).
* ``bleu``: corpus BLEU-4 (Papineni et al. 2002: clipped n-gram counts summed over the corpus,
  geometric mean of the 1..4-gram precisions, brevity penalty on total lengths) with add-one
  smoothing of the 2..4-gram precisions (Lin & Och 2004) and an "effective order": orders of
  which the outputs contain no n-gram at all (every output shorter than n) are left out of the
  mean instead of counting as a perfect 1.0, which would let one-word outputs that are mostly
  wrong score far above their unigram precision. Unigram precision is never smoothed: disjoint
  outputs score 0. It is a "BLEU-style" score on normalised tokens, not sacreBLEU's
  tokenisation.
* ``perplexity``: ``exp(eval_loss)``, capped at ``exp(MAX_LOG_PERPLEXITY)`` so it stays finite.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})
"""Metrics where a decrease is an improvement (the gate flips the sign for these)."""

GATE_METRICS = ("eval_loss", "perplexity", "exact_match", "rouge_l", "bleu")
"""Metrics the gate may compare (the same list ``EvalConfig.gate_metric`` accepts)."""

MAX_LOG_PERPLEXITY = 700.0
"""``exp`` overflows a float just above 709; larger losses report ``exp(700)``."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Normalise an answer the SQuAD way.

    Args:
        text: Any string.

    Returns:
        Lowercased text without ASCII punctuation or the articles a/an/the, with runs of
        whitespace collapsed to one space and no leading or trailing space.
    """
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """The normalised word tokens of ``text`` (what ROUGE-L and BLEU count)."""
    return normalize(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` and ``reference`` are equal after ``normalize``, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a)*len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between two texts on normalised tokens.

    Args:
        prediction: Generated text.
        reference: Expected text.

    Returns:
        ``2PR / (P + R)`` with ``P = LCS / len(pred)`` and ``R = LCS / len(ref)``; 1.0 when
        both are empty after normalisation, 0.0 when only one is.
    """
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 1.0 if not p and not r else 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _ngrams(toks: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU (see the module docstring for the exact definition and smoothing).

    Args:
        predictions: Generated texts.
        references: One reference per prediction.
        max_n: Highest n-gram order (4 for BLEU-4).

    Returns:
        A score in [0, 1]; 1.0 for identical corpora, 0.0 when no unigram matches.

    Raises:
        ValueError: The two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for pred, ref in zip(predictions, references, strict=True):
        p, r = tokens(pred), tokens(ref)
        hyp_len += len(p)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            hyp = _ngrams(p, n)
            refc = _ngrams(r, n)
            matches[n - 1] += sum(min(c, refc[g]) for g, c in hyp.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    if hyp_len == 0:
        return 1.0 if ref_len == 0 else 0.0
    if matches[0] == 0:
        return 0.0
    log_p = math.log(matches[0] / totals[0])
    orders = 1
    for n in range(1, max_n):
        if totals[n]:
            log_p += math.log((matches[n] + 1) / (totals[n] + 1))
            orders += 1
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_p / orders)


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped at ``exp(MAX_LOG_PERPLEXITY)``; NaN stays NaN."""
    if math.isnan(loss):
        return math.nan
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match, mean ROUGE-L and corpus BLEU of paired texts.

    Args:
        predictions: Generated texts.
        references: One reference per prediction.

    Returns:
        ``{"exact_match", "rouge_l", "bleu"}``; all 0.0 for empty lists.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"exact_match": 0.0, "rouge_l": 0.0, "bleu": 0.0}
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "bleu": bleu(predictions, references),
    }


def gate(metric: str, base: float, tuned: float, required: float) -> dict[str, Any]:
    """Decide whether the tuned model beats base by enough on ``metric``.

    Args:
        metric: One of ``GATE_METRICS``.
        base: The base model's value.
        tuned: The tuned model's value.
        required: Minimum improvement; negative disables the gate (it always passes).

    Returns:
        ``{"metric", "base", "tuned", "improvement", "required", "passed", "enabled",
        "direction", "reason"}`` where improvement is ``base - tuned`` for lower-is-better
        metrics and ``tuned - base`` otherwise. A NaN on either side fails an enabled gate.
    """
    if metric not in GATE_METRICS:
        raise ValueError(
            f"unknown gate metric {metric!r}; expected one of {', '.join(GATE_METRICS)}"
        )
    lower = metric in LOWER_IS_BETTER
    improvement = base - tuned if lower else tuned - base
    enabled = required >= 0
    # NaN compares False, so a NaN improvement fails an enabled gate, as it should.
    passed = (not enabled) or improvement >= required
    direction = "lower is better" if lower else "higher is better"
    if not enabled:
        reason = f"gate disabled (gate_min_improvement {required:g} < 0)"
    else:
        reason = (
            f"{metric} improvement {improvement:+.4g} ({direction}: base {base:.4g}, "
            f"tuned {tuned:.4g}), required >= {required:g}"
        )
    return {
        "metric": metric,
        "base": base,
        "tuned": tuned,
        "improvement": improvement,
        "required": required,
        "passed": passed,
        "enabled": enabled,
        "direction": direction,
        "reason": reason,
    }
