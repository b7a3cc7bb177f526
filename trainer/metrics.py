"""Text-generation metrics and the base-vs-tuned gate (pure Python, no heavy imports).

Each metric has one definition, so scores compare between runs and with other tools:

* ``exact_match`` (mean over rows): 1.0 when prediction and reference are equal after
  ``normalize``: Unicode NFKC, ``casefold``, runs of whitespace collapsed to one space, ends
  trimmed, and one trailing run of sentence-final ``.``, ``!`` or ``?`` dropped. Nothing else is
  removed, so signs, decimals and symbols count (``-5`` != ``5``, ``3.5`` != ``35``,
  ``C++`` != ``C``, ``{"a": 1}`` != ``a 1``). Why this little: generated answers differ from
  their references in case, spacing and a final full stop far more often than those carry
  meaning, while punctuation inside an answer is part of it (numbers, code, JSON). SQuAD's
  normalisation also deletes all punctuation and the articles a/an/the; that suits extractive
  spans from Wikipedia, but it made ``-5`` equal ``5`` and the answer ``A`` equal the empty
  string, so it is not used. A blank prediction never matches a non-blank reference; two
  blank texts match.
* ``rouge_l`` (mean over rows): ROUGE-L F1 (beta 1) from the longest common subsequence of
  word tokens, with the tokenisation of Google's ``rouge-score`` package with its defaults
  (``RougeScorer(["rougeL"])``, no stemmer): lowercase, every run of characters other than
  letters and digits is a separator. On ASCII text the tokens are identical to rouge-score's;
  letters outside ASCII are kept as letters (rouge-score deletes them, which scores most
  non-English text as empty). As in rouge-score, the score is 0.0 when either side has no
  token.
* ``bleu``: corpus BLEU-4 computed exactly as sacreBLEU 2.x ``corpus_bleu`` with its defaults
  (signature ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp``): the ``13a`` tokenizer
  (mteval-v13a), case-sensitive, clipped n-gram counts and lengths summed over the corpus,
  brevity penalty on the summed lengths (closest reference length per segment), geometric
  mean of the 1..4-gram precisions with the NIST ``exp`` smoothing of zero-match orders, no
  effective order. Reported on a 0-1 scale (sacreBLEU's score / 100). Consequence of those
  defaults: a corpus whose outputs are all shorter than 4 tokens has no 4-gram and scores 0.0.
* ``perplexity``: ``exp(eval_loss)``, capped at ``exp(MAX_LOG_PERPLEXITY)`` so it stays finite.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})
"""Metrics where a decrease is an improvement (the gate flips the sign for these)."""

GATE_METRICS = ("eval_loss", "perplexity", "exact_match", "rouge_l", "bleu")
"""Metrics the gate may compare (the same list ``EvalConfig.gate_metric`` accepts)."""

MAX_LOG_PERPLEXITY = 700.0
"""``exp`` overflows a float just above 709; larger losses report ``exp(700)``."""

BLEU_MAX_ORDER = 4

METRICS_NOTE = (
    "Exact match compares NFKC-normalised, casefolded text with whitespace collapsed and a "
    "final . ! ? dropped (signs, decimals and symbols count; a blank output never matches). "
    "ROUGE-L is the LCS F1 on rouge-score's tokens (lowercased letters and digits). BLEU is "
    "sacreBLEU's corpus BLEU-4 (13a tokenizer, case-sensitive, exp smoothing) on a 0-1 scale. "
    "Decoding is greedy."
)
"""One paragraph for reports: what the three generation metrics compute."""
_SENTENCE_END = re.compile(r"[.!?]+$")
_WORD = re.compile(r"[^\W_]+")

# sacreBLEU's TokenizerRegexp, applied in this order to " " + line + " " (mteval-v13a).
_13A_RULES = (
    # symbols and most ASCII punctuation become their own tokens
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # period and comma, unless preceded by a digit
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    # period and comma, unless followed by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # a dash preceded by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def normalize(text: str) -> str:
    """Normalise an answer for exact match (see the module docstring for why this little).

    Args:
        text: Any string.

    Returns:
        NFKC-normalised, casefolded text with whitespace runs collapsed to one space, no
        leading or trailing space and no trailing run of ``.``, ``!`` or ``?``.
    """
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return _SENTENCE_END.sub("", text).rstrip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` and ``reference`` are equal after ``normalize``, else 0.0.

    A blank prediction never matches a non-blank reference (even one that normalises to the
    empty string, such as ``"."``), and vice versa; two blank strings match.
    """
    if (not prediction.strip()) != (not reference.strip()):
        return 0.0
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def rouge_tokens(text: str) -> list[str]:
    """ROUGE word tokens: lowercased runs of letters and digits (rouge-score's rule on ASCII)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


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
    """ROUGE-L F1 between two texts, as rouge-score's ``rougeL`` fmeasure.

    Args:
        prediction: Generated text.
        reference: Expected text.

    Returns:
        ``2PR / (P + R)`` with ``P = LCS / len(pred)`` and ``R = LCS / len(ref)`` over
        ``rouge_tokens``; 0.0 when either side has no token (rouge-score's rule).
    """
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def tokenize_13a(line: str) -> list[str]:
    """sacreBLEU's default ``13a`` tokenisation of one segment (trailing whitespace ignored).

    Args:
        line: A hypothesis or reference segment.

    Returns:
        Its tokens, e.g. ``"It wasn't 3.5-fold."`` -> ``It wasn't 3.5 - fold .``.
    """
    line = line.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(toks: list[str], max_n: int) -> Counter[tuple[str, ...]]:
    return Counter(
        tuple(toks[i : i + n]) for n in range(1, max_n + 1) for i in range(len(toks) - n + 1)
    )


def _closest_ref_len(hyp_len: int, ref_lens: list[int]) -> int:
    """The reference length closest to the hypothesis length (the shorter one on a tie)."""
    return min(ref_lens, key=lambda n: (abs(hyp_len - n), n))


def bleu_from_stats(
    correct: Sequence[int], total: Sequence[int], sys_len: int, ref_len: int
) -> float:
    """BLEU in [0, 1] from corpus statistics, as sacreBLEU's ``compute_bleu`` with ``exp``.

    Args:
        correct: Clipped matching n-gram counts for n = 1..max order.
        total: Hypothesis n-gram counts for n = 1..max order.
        sys_len: Summed hypothesis length in tokens.
        ref_len: Summed (closest) reference length in tokens.

    Returns:
        The score; 0.0 when nothing matches or an order has no n-gram at all.
    """
    if not any(correct):
        return 0.0
    brevity = 1.0
    if sys_len < ref_len:
        brevity = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    log_sum = 0.0
    smooth = 1.0
    for c, t in zip(correct, total, strict=True):
        if t == 0:
            # No n-gram of this order anywhere: sacreBLEU's precision stays 0 (log -> -inf).
            return 0.0
        if c == 0:
            # NIST "exp" smoothing: the k-th zero-match order counts as 1 / (2**k * total).
            smooth *= 2
            log_sum += math.log(1.0 / (smooth * t))
        else:
            log_sum += math.log(c / t)
    return brevity * math.exp(log_sum / len(correct))


def bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    max_n: int = BLEU_MAX_ORDER,
) -> float:
    """sacreBLEU-compatible corpus BLEU (see the module docstring), on a 0-1 scale.

    Args:
        predictions: Generated texts.
        references: For each prediction, its reference, or a list of its references
            (sacreBLEU's ``refs`` transposed: one entry per segment).
        max_n: Highest n-gram order (4 for BLEU-4).

    Returns:
        sacreBLEU's ``corpus_bleu(predictions, refs).score / 100``.

    Raises:
        ValueError: The two lists differ in length, or a segment has no reference.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    correct = [0] * max_n
    total = [0] * max_n
    sys_len = ref_len = 0
    for pred, refs in zip(predictions, references, strict=True):
        ref_list = [refs] if isinstance(refs, str) else list(refs)
        if not ref_list:
            raise ValueError("a prediction has no reference")
        hyp = tokenize_13a(pred)
        ref_counts: Counter[tuple[str, ...]] = Counter()
        ref_lens = []
        for ref in ref_list:
            toks = tokenize_13a(ref)
            ref_lens.append(len(toks))
            for gram, count in _ngrams(toks, max_n).items():
                ref_counts[gram] = max(ref_counts[gram], count)
        sys_len += len(hyp)
        ref_len += _closest_ref_len(len(hyp), ref_lens)
        for gram, count in _ngrams(hyp, max_n).items():
            n = len(gram) - 1
            total[n] += count
            correct[n] += min(count, ref_counts[gram])
    return bleu_from_stats(correct, total, sys_len, ref_len)


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
