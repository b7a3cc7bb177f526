"""Deterministic generator of the real-language task dataset (``dataset/orders.jsonl``).

Short customer messages about an order, in varied wording, and two tasks on them:

* ``extract`` (about two thirds of the rows): return the order as one JSON object of a fixed
  shape, ``{"name": ..., "item": ..., "quantity": N, "city": ..., "date": ...}``: keys in that
  order, ``json.dumps`` spacing, the quantity as a number even when the message spells it
  (``"three lamps"`` -> ``3``), the date as ``Month D`` whichever way the message writes it
  (``"12 May"``, ``"May 12th"``, ``"the 12th of May"``). Scored by exact match: one wrong
  character anywhere fails the row.
* ``reply``: a one-sentence confirmation in natural language, ``"Hi Ana, your 3 desk lamps
  will be delivered to Porto on May 12."`` (plural when the quantity is not 1). ROUGE-L gives
  partial credit where exact match gives none.

Held-out rows are new, not re-filled training templates: the eval rows use first names, last
names, items, cities, message templates and instruction wordings that no training row uses.
The split is the one ``llmft validate`` computes (``crc32`` of the row's canonical JSON
against ``eval_fraction``): a row is generated from the held-out pools only when its hash puts
it in eval for every ``eval_fraction`` from ``EVAL_FRACTION_MIN`` to ``EVAL_FRACTION_MAX``, and
from the training pools only when it lands in train for all of them, so any eval fraction in
that range (the default 0.1 included) gives the same split.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence

import msgspec

EVAL_FRACTION_MIN = 0.1
EVAL_FRACTION_MAX = 0.3
"""Every ``eval_fraction`` in this range splits the file into exactly the held-out rows."""

DEFAULT_TRAIN = 1000
DEFAULT_EVAL = 60
"""Row counts of the committed ``dataset/orders.jsonl``."""

KEYS = ("name", "item", "quantity", "city", "date")

MONTHS = (
    "January February March April May June July August September October November December"
).split()

NUMBER_WORDS = {
    1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
    9: "nine", 10: "ten", 11: "eleven", 12: "twelve",
}  # fmt: skip

# (train pool, held-out pool): disjoint, so an eval row's entities are never seen in training.
FIRST_NAMES = (
    "Ana Ben Carla David Elena Farid Grace Hugo Irene Jonas Karin Leo Maya Nadia Oscar Paula "
    "Quentin Rosa Samuel Tara Umar Vera Walter Yara Zoe Aaron Bianca Cyril Dana Emil Fiona "
    "Gustav Hanna Ivan Julia Kofi Lina Marco Nora Otto Priya Rafael Sofia Tomas Ula Viktor "
    "Wendy Xavier",
    "Agnes Bruno Chiara Dmitri Esther Felix Greta Henrik Ines Jakob Kira Luca",
)
LAST_NAMES = (
    "Ruiz Okafor Larsen Moreau Novak Schmidt Costa Haddad Kowalski Ito Jensen Rossi Silva "
    "Fischer Duarte Weber Nakamura Petrov Murphy Lindqvist Achebe Varga Santos Keller Dubois "
    "Horvat Bianchi Tanaka Olsen Mendes Brennan Sato",
    "Almeida Berger Castillo Demir Eriksen Fontaine Gallo Hoffmann",
)
CITIES = (
    "Porto Lyon Leeds Graz Bergen Turin Malmo Ghent Krakow Seville Utrecht Aarhus Bremen "
    "Cork Bologna Tampere Brno Nantes Basel Split Riga Tartu Bilbao Genoa Linz Odense "
    "Bristol Lille Gdansk Padua Dresden Valencia",
    "Toulouse Salzburg Uppsala Antwerp Verona Cadiz Bruges Poznan",
)
# Items whose plural is the singular plus "s".
ITEMS = (
    [
        "desk lamp", "coffee mug", "notebook", "backpack", "kettle", "umbrella", "bath towel",
        "scented candle", "bluetooth speaker", "blender", "pillow", "water bottle",
        "phone charger", "yoga mat", "picture frame", "wall clock", "cutting board",
        "wool blanket", "reading lamp", "travel adapter", "frying pan", "garden chair",
        "tea towel", "flower pot",
    ],
    [
        "laptop stand", "desk fan", "toaster", "sleeping bag", "rain jacket", "door mat",
    ],
)  # fmt: skip

# Message templates. {who} is the full name, {first} the first name, {qty} the quantity as the
# message words it, {thing} the item phrase agreeing with it, {city}, {date} as written.
TEMPLATES = (
    [
        "Hello, this is {who}. I would like to order {qty} {thing}. Please ship to {city} by {date}.",
        "Hi! {who} here. Could you send {qty} {thing} to my address in {city}? I need them on {date}.",
        "Order request: {qty} {thing}, delivery to {city} on {date}. Thanks, {who}",
        "Good morning, I'm {who} from {city}. Please deliver {qty} {thing} on {date}.",
        "{who} writing. We need {qty} {thing} in {city}, ideally on {date}.",
        "Can I get {qty} {thing}? Deliver to {city}, {date}. Regards, {who}",
        "Dear team, please arrange {qty} {thing} for {date}. The address is in {city}. Best, {who}",
        "My name is {who} and I live in {city}. I want {qty} {thing} delivered on {date}.",
        "Quick one: {qty} {thing} to {city} for {date}, please. - {who}",
        "Hey, it's {first} ({who}). Send {qty} {thing} over to {city} on {date}?",
        "I, {who}, am ordering {qty} {thing}. Delivery city: {city}. Date: {date}.",
        "For {date} I need {qty} {thing} delivered to {city}. Thank you! {who}",
        "Please book a delivery of {qty} {thing} to {city}. Preferred date {date}. Name: {who}.",
        "{who} from {city} here. Looking to buy {qty} {thing}, arriving on {date} if possible.",
        "Hi there, could {qty} {thing} reach {city} on {date}? Cheers, {who}",
        "New order from {who}: {qty} {thing}. Ship to {city}. Needed by {date}.",
        "Hello! I'd love {qty} {thing}. I'm in {city} and {date} works for me. {who}",
        "We are moving to {city} and need {qty} {thing} there on {date}. Kind regards, {who}",
        "Could you deliver {qty} {thing} on {date}? I'm {who}, based in {city}.",
        "Greetings from {city}! {who} would like {qty} {thing}, delivered {date}.",
        "{first} here ({who}). Add {qty} {thing} to my order; deliver to {city} on {date}.",
        "Please send {qty} {thing} to {who}, {city}. We expect them on {date}.",
        "Order for {who}. Items: {qty} {thing}. Destination: {city}. Delivery: {date}.",
        "Hi, {who} again. This time I need {qty} {thing} in {city} on {date}.",
    ],
    [
        "Hi, I am {who}. Would it be possible to get {qty} {thing} to {city} on {date}?",
        "Delivery needed on {date} in {city}: {qty} {thing}. Sent by {who}.",
        "Hello team! {who} in {city} wants {qty} {thing}. Please deliver them on {date}.",
        "This is {who}. Ship {qty} {thing}, destination {city}, date {date}. Thanks a lot.",
        "{who} would like to place an order: {qty} {thing}, to be delivered to {city} on {date}.",
        "Morning! Can {qty} {thing} be sent to {city} for {date}? Yours, {who}",
    ],
)

EXTRACT_INSTRUCTIONS = (
    [
        "Extract the order from the message as JSON with the keys name, item, quantity, city "
        "and date.",
        'Return the order as JSON: {"name": ..., "item": ..., "quantity": <number>, "city": '
        '..., "date": ...}.',
        "Read the customer message and output its order details as one JSON object (name, "
        "item, quantity, city, date).",
        "Turn this message into a JSON record with the fields name, item, quantity, city and date.",
        "Parse the order. Answer with JSON only, keys: name, item, quantity, city, date.",
    ],
    [
        "Give the order details of this message as a JSON object with name, item, quantity, "
        "city and date.",
        "Convert the request below into JSON (keys name, item, quantity, city, date).",
    ],
)
REPLY_INSTRUCTIONS = (
    [
        "Write a one-sentence delivery confirmation for this customer.",
        "Reply to the customer with a single sentence confirming the delivery.",
        "Confirm this order to the customer in one sentence.",
        "Write the short confirmation message we send back for this order.",
    ],
    [
        "Send the customer a one-line confirmation of the delivery.",
        "Answer this message with a one-sentence order confirmation.",
    ],
)


def _encode_row(row: dict[str, str]) -> bytes:
    """The bytes ``llmft validate`` hashes to split a row (keys in contract order)."""
    return msgspec.json.encode(
        {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}
    )


def split_of(row: dict[str, str]) -> str | None:
    """``eval``, ``train``, or ``None`` when the side depends on the eval fraction in range."""
    h = zlib.crc32(_encode_row(row))
    if h < int(EVAL_FRACTION_MIN * 2**32):
        return "eval"
    if h >= int(EVAL_FRACTION_MAX * 2**32):
        return "train"
    return None


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date_text(rng: random.Random, month: str, day: int) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"{month} {day}"
    if style == 1:
        return f"{day} {month}"
    if style == 2:
        return f"{month} {_ordinal(day)}"
    return f"the {_ordinal(day)} of {month}"


def _thing(item: str, qty: int) -> str:
    return item if qty == 1 else item + "s"


def _qty_text(rng: random.Random, qty: int) -> str:
    if qty == 1:
        return rng.choice(["1", "one", "a", "a"])
    return str(qty) if rng.random() < 0.5 else NUMBER_WORDS[qty]


def make_row(rng: random.Random, side: int) -> dict[str, str]:
    """One row drawn from the training pools (``side`` 0) or the held-out pools (``side`` 1).

    Args:
        rng: The random source.
        side: 0 for the training pools, 1 for the held-out pools.

    Returns:
        An Alpaca row: ``instruction``, ``input`` (the customer message), ``output``.
    """
    first = rng.choice(FIRST_NAMES[side].split())
    who = f"{first} {rng.choice(LAST_NAMES[side].split())}"
    item = rng.choice(ITEMS[side])
    city = rng.choice(CITIES[side].split())
    qty = rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    month = rng.choice(MONTHS)
    day = rng.randint(1, 28)
    date = f"{month} {day}"
    qty_text = _qty_text(rng, qty)
    thing = _thing(item, qty)
    if qty_text == "a" and item[0] in "aeiou":
        qty_text = "an"
    message = rng.choice(TEMPLATES[side]).format(
        who=who, first=first, qty=qty_text, thing=thing, city=city, date=_date_text(rng, month, day)
    )
    if rng.random() < 2 / 3:
        record = {"name": who, "item": item, "quantity": qty, "city": city, "date": date}
        return {
            "instruction": rng.choice(EXTRACT_INSTRUCTIONS[side]),
            "input": message,
            "output": json.dumps(record, ensure_ascii=False),
        }
    return {
        "instruction": rng.choice(REPLY_INSTRUCTIONS[side]),
        "input": message,
        "output": f"Hi {first}, your {qty} {thing} will be delivered to {city} on {date}.",
    }


def generate_rows(
    n_train: int = DEFAULT_TRAIN, n_eval: int = DEFAULT_EVAL, seed: int = 0
) -> list[dict[str, str]]:
    """Generate the dataset: ``n_train`` training rows and ``n_eval`` held-out rows, mixed.

    Args:
        n_train: Rows whose hash puts them in train (for every eval fraction in range).
        n_eval: Rows whose hash puts them in eval, drawn from the held-out pools only.
        seed: Generator seed; the same seed gives the same rows in the same order.

    Returns:
        Distinct rows (no two share instruction and input), in a seeded shuffled order.
    """
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for side, want, target in ((0, n_train, "train"), (1, n_eval, "eval")):
        got = 0
        while got < want:
            row = make_row(rng, side)
            key = (row["instruction"], row["input"])
            if key in seen or split_of(row) != target:
                continue
            seen.add(key)
            rows.append(row)
            got += 1
    rng.shuffle(rows)
    return rows


def held_out_vocabulary() -> dict[str, Sequence[str]]:
    """The held-out pools (what no training row contains), for tests and reports."""
    return {
        "first_names": FIRST_NAMES[1].split(),
        "last_names": LAST_NAMES[1].split(),
        "cities": CITIES[1].split(),
        "items": ITEMS[1],
        "templates": TEMPLATES[1],
        "instructions": EXTRACT_INSTRUCTIONS[1] + REPLY_INSTRUCTIONS[1],
    }
