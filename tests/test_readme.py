"""README stays true: its parameter table matches the config dataclasses and the pipeline."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from trainer.config import EvalConfig, TrainConfig, ValidateConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _table() -> dict[str, str]:
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", README, flags=re.M)
    return dict(rows)


def test_every_config_field_is_documented_with_its_default() -> None:
    table = _table()
    for cls in (ValidateConfig, TrainConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            assert f.name in table, f"README parameter table lacks {f.name}"
            default = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
            assert table[f.name] == default, f"README says {f.name}={table[f.name]}, code {default}"


def test_the_two_commands_come_first() -> None:
    first = README.index("make demo")
    assert first < README.index("## The pipeline")
    assert "make test" in README[: first + 200]
