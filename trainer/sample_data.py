"""Deterministic generator of the bundled sample dataset.

The tasks are short deterministic transformations that a tiny randomly initialised model can
learn on a laptop CPU in minutes and that are checkable by exact match: copying, reversing,
picking words, upper-casing, counting, word categories, opposites and small sums. Instruction
wording varies per task and about half of the rows use the ``input`` field.

The same word lists feed the tiny model's tokenizer corpus, so the sample's words are single
tokens or short merges and sequences stay short.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

CATEGORIES: dict[str, list[str]] = {
    "animal": "cat dog horse cow sheep goat lion tiger bear wolf fox rabbit mouse deer zebra monkey".split(),
    "fruit": "apple banana cherry grape lemon mango orange peach pear plum melon kiwi lime berry fig".split(),
    "color": "red blue green yellow purple pink brown black white gray silver gold violet cyan".split(),
    "tool": "hammer saw drill wrench knife spoon brush shovel rake needle ladder scissors chisel axe".split(),
}

OPPOSITES: dict[str, str] = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "left": "right", "old": "new",
    "happy": "sad", "light": "dark", "open": "closed", "early": "late", "full": "empty",
    "hard": "soft", "high": "low", "long": "short", "rich": "poor", "strong": "weak",
    "wet": "dry", "near": "far", "thick": "thin", "loud": "quiet", "clean": "dirty",
    "true": "false", "first": "last", "inside": "outside", "day": "night", "win": "lose",
}  # fmt: skip

COMMON_WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education foot boy age policy "
    "river tree stone cloud rain snow wind sun moon star sea lake hill road bridge garden field "
    "window table chair bed cup plate bottle box bag shoe hat coat shirt ring key lamp clock "
    "bread milk cheese egg rice soup cake tea coffee sugar salt paper pen letter song music "
    "dance film photo map train plane ship boat bike ball kite toy gift party river forest "
    "quick lazy bright calm brave kind proud wise gentle busy quiet happy sunny windy rainy "
    "run walk jump swim read write sing play eat drink sleep build draw paint cook clean open "
    "make take give find tell ask show call try leave feel become seem keep begin help talk turn"
).split()

_COPY = [
    "Repeat the following text exactly.",
    "Copy the text below.",
    "Echo back this input without changes.",
    "Write the same words again.",
    "Return the input unchanged.",
]
_REVERSE = [
    "Reverse the order of the words.",
    "Write these words in reverse order.",
    "List the words backwards, last word first.",
    "Flip the word order of the text.",
]
_FIRST = [
    "What is the first word of the text?",
    "Return only the first word.",
    "Give the word that comes first.",
]
_LAST = [
    "What is the last word of the text?",
    "Return only the final word.",
    "Give the word that comes last.",
]
_UPPER = [
    "Convert the text to upper case.",
    "Write the words in capital letters.",
    "Rewrite this in uppercase.",
]
_COUNT = [
    "How many words are in the text?",
    "Count the words in the input.",
    "Tell me the number of words.",
]
_CATEGORY = [
    "Is {w} an animal, a fruit, a color or a tool?",
    "Which category does the word {w} belong to: animal, fruit, color or tool?",
    "Classify {w} as animal, fruit, color or tool.",
    "Name the category of {w}.",
]
_OPPOSITE = [
    "What is the opposite of {w}?",
    "Give the antonym of the word {w}.",
    "Name the opposite of {w}.",
]
_SUM = [
    "What is {a} plus {b}?",
    "Add {a} and {b}.",
    "Compute the sum of {a} and {b}.",
    "What do you get when you add {a} to {b}?",
]

_ALL_WORDS = sorted(
    set(COMMON_WORDS) | {w for ws in CATEGORIES.values() for w in ws} | set(OPPOSITES)
)


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(_ALL_WORDS) for _ in range(rng.randint(lo, hi))]


def _copy(rng: random.Random) -> dict[str, str]:
    ws = " ".join(_words(rng, 2, 6))
    return {"instruction": rng.choice(_COPY), "input": ws, "output": ws}


def _reverse(rng: random.Random) -> dict[str, str]:
    ws = _words(rng, 2, 5)
    return {
        "instruction": rng.choice(_REVERSE),
        "input": " ".join(ws),
        "output": " ".join(ws[::-1]),
    }


def _first(rng: random.Random) -> dict[str, str]:
    ws = _words(rng, 2, 6)
    return {"instruction": rng.choice(_FIRST), "input": " ".join(ws), "output": ws[0]}


def _last(rng: random.Random) -> dict[str, str]:
    ws = _words(rng, 2, 6)
    return {"instruction": rng.choice(_LAST), "input": " ".join(ws), "output": ws[-1]}


def _upper(rng: random.Random) -> dict[str, str]:
    ws = " ".join(_words(rng, 1, 3))
    return {"instruction": rng.choice(_UPPER), "input": ws, "output": ws.upper()}


def _count(rng: random.Random) -> dict[str, str]:
    ws = _words(rng, 1, 9)
    return {"instruction": rng.choice(_COUNT), "input": " ".join(ws), "output": str(len(ws))}


def _category(rng: random.Random) -> dict[str, str]:
    cat = rng.choice(sorted(CATEGORIES))
    w = rng.choice(CATEGORIES[cat])
    return {"instruction": rng.choice(_CATEGORY).format(w=w), "input": "", "output": cat}


def _opposite(rng: random.Random) -> dict[str, str]:
    w = rng.choice(sorted(OPPOSITES))
    return {"instruction": rng.choice(_OPPOSITE).format(w=w), "input": "", "output": OPPOSITES[w]}


def _sum(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return {"instruction": rng.choice(_SUM).format(a=a, b=b), "input": "", "output": str(a + b)}


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "copy": _copy,
    "reverse": _reverse,
    "first_word": _first,
    "last_word": _last,
    "upper": _upper,
    "count": _count,
    "category": _category,
    "opposite": _opposite,
    "sum": _sum,
}


def generate_rows(n: int = 3000, seed: int = 0) -> list[dict[str, str]]:
    """Generate ``n`` distinct sample rows, cycling through the task families.

    Args:
        n: Number of rows.
        seed: Random seed; the same seed gives the same rows.

    Returns:
        Rows with ``instruction``, ``input`` and ``output``.
    """
    rng = random.Random(seed)
    names = sorted(TASKS)
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"could not generate {n} distinct rows")
        # Cycle over families by attempt so a family with few distinct rows saturates
        # instead of stalling the generator.
        row = TASKS[names[attempts % len(names)]](rng)
        key = (row["instruction"], row["input"])
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def tokenizer_corpus(seed: int = 0) -> Iterator[str]:
    """Text the tiny tokenizer is trained on: sample-style rows plus varied word sequences."""
    rng = random.Random(seed)
    for row in generate_rows(4000, seed=seed + 1):
        yield row["instruction"]
        if row["input"]:
            yield row["input"]
        yield row["output"]
    for _ in range(4000):
        ws = _words(rng, 3, 12)
        yield " ".join(ws)
        yield " ".join(ws).capitalize() + "."
        yield " ".join(w.upper() for w in ws[:3])
    for i in range(1000):
        yield f"{i} {i * 7 % 100} {i + 13}"
        # Chat roles, so the template's own words are single tokens.
        yield "system user assistant"
