"""Tables as text: Markdown (the report's tables) and fixed-width columns (`geopd plan`).

Cells are formatted by the caller (the report rounds per column and marks missing values, the
planner prints hours and GiB): this module only lays them out, so it needs neither pandas nor
the callers' units, and `geopd plan` stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header, the `---` rule, one line per row; ends with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Column:
    """One fixed-width column: its header, its width in characters and its alignment."""

    header: str
    width: int
    align: str = ">"   # ">" right (numbers), "<" left (names)


def fixed(columns: Sequence[Column], rows: Iterable[Sequence[object]], indent: int = 2) -> list[str]:
    """Fixed-width lines: the header line, then one line per row. The first column names the row:
    rows are indented by `indent` characters, taken from that column's width, so a row's first
    cell sits under its header's title. A cell wider than its column pushes the rest of its line
    right (never truncated). Cells are str() of what is given, aligned as `format` aligns them."""
    first, rest = columns[0], columns[1:]
    lines = ["".join(_cell(c.header, c) for c in columns)]
    for row in rows:
        label = Column(first.header, first.width - indent, first.align)
        lines.append(" " * indent + _cell(row[0], label) + "".join(_cell(v, c) for v, c in zip(row[1:], rest)))
    return lines


def _cell(value: object, column: Column) -> str:
    return format(str(value), f"{column.align}{column.width}")
