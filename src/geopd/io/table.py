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
    cell sits under its header's title. A column widens to its widest cell (never truncated), a
    right-aligned one to keep a space before it, so that cells stay aligned and apart. Cells are str() of what is given,
    aligned as `format` aligns them."""
    rows = [[str(v) for v in row] for row in rows]
    widths = []
    for i, c in enumerate(columns):
        gap = 1 if c.align == ">" else 0  # a right-aligned cell keeps a space from its left neighbour
        cells = [len(row[i]) for row in rows if i < len(row)]
        need = (indent if i == 0 else 0) + max(cells, default=0) + gap
        widths.append(max(c.width, need, len(c.header) + gap))
    columns = [Column(c.header, w, c.align) for c, w in zip(columns, widths)]
    first, rest = columns[0], columns[1:]
    lines = ["".join(_cell(c.header, c) for c in columns)]
    for row in rows:
        label = Column(first.header, first.width - indent, first.align)
        lines.append(" " * indent + _cell(row[0], label) + "".join(_cell(v, c) for v, c in zip(row[1:], rest)))
    return lines


def _cell(value: object, column: Column) -> str:
    return format(str(value), f"{column.align}{column.width}")
