"""trainer.config helpers: the generated ``Args:`` block that documents pipeline parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import docstring_parser
import pytest

from trainer.config import EvalConfig, TrainConfig, ValidateConfig, args_doc, field_help

CONFIGS = (TrainConfig, ValidateConfig, EvalConfig)


def _parsed(doc: str) -> list[docstring_parser.DocstringParam]:
    """The Args entries as KFP reads them (docstring_parser on a docstring with a header)."""
    return docstring_parser.parse(f"Header line.\n\n{doc}").params


def test_every_field_documented_once_with_its_help() -> None:
    params = _parsed(args_doc(*CONFIGS))
    names = [p.arg_name for p in params]
    assert len(names) == len(set(names))
    all_fields = {f.name for cls in CONFIGS for f in dataclasses.fields(cls)}
    assert set(names) == all_fields
    for p in params:
        helps = [field_help(cls)[p.arg_name] for cls in CONFIGS if p.arg_name in field_help(cls)]
        # One line per entry: the description is the help text exactly, no wrapped newlines.
        assert p.description == helps[0], p.arg_name


def test_first_definition_wins_and_order_follows_classes() -> None:
    shared = {"model", "max_seq_len", "long_rows"}
    train_first = {
        p.arg_name: p.description for p in _parsed(args_doc(TrainConfig, ValidateConfig))
    }
    validate_first = {
        p.arg_name: p.description for p in _parsed(args_doc(ValidateConfig, TrainConfig))
    }
    for name in shared:
        assert train_first[name] == field_help(TrainConfig)[name]
        assert validate_first[name] == field_help(ValidateConfig)[name]
        assert train_first[name] != validate_first[name]  # else this test proves nothing
    names = [p.arg_name for p in _parsed(args_doc(ValidateConfig, EvalConfig))]
    assert names == [*field_help(ValidateConfig), *field_help(EvalConfig)]


def test_extra_entries_come_first_and_win() -> None:
    extra = {"output_root": "Where runs land.", "model": "Overridden."}
    params = _parsed(args_doc(EvalConfig, TrainConfig, extra=extra))
    assert [p.arg_name for p in params][:2] == ["output_root", "model"]
    got = {p.arg_name: p.description for p in params}
    assert got["output_root"] == "Where runs land."
    assert got["model"] == "Overridden."
    assert [p.arg_name for p in params].count("model") == 1


def test_block_shape_and_indent() -> None:
    doc = args_doc(EvalConfig, indent="  ")
    lines = doc.splitlines()
    assert lines[0] == "Args:"
    assert lines[1] == f"  max_new_tokens: {field_help(EvalConfig)['max_new_tokens']}"
    assert len(lines) == 1 + len(dataclasses.fields(EvalConfig))
    assert doc.endswith("\n")
    assert args_doc() == "Args:\n"


def test_field_without_help_is_refused() -> None:
    @dataclass
    class Undocumented:
        knob: int = field(default=1)

    with pytest.raises(ValueError, match=r"Undocumented\.knob has no help text"):
        args_doc(Undocumented)


def test_help_texts_are_single_line() -> None:
    """A newline in a help text would break the one-line entries args_doc writes."""
    for cls in CONFIGS:
        for name, text in field_help(cls).items():
            assert "\n" not in text and text.strip() == text, f"{cls.__name__}.{name}"
