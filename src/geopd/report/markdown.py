"""A table as CSV (full precision) and Markdown (rounded, titled, with its definitions).

The cells are formatted here (fmt: rounding per column, missing values as a dash); the layout
is geopd.io.table's, which `geopd plan` shares."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geopd.io import table as layout

MISSING = "–"


@dataclass
class Section:
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=dict)   # decimals per column (default 3)


@dataclass
class Table:
    name: str                 # file stem under results/tables
    title: str
    frame: pd.DataFrame       # what the CSV holds
    notes: list[str] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=dict)
    extra: list[Section] = field(default_factory=list)   # further sections of the Markdown only
    empty: str = ""           # what an empty table means (default: its inputs do not exist)


def fmt(value, digits: int = 3) -> str:
    if value is None or value is pd.NA:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:.{digits}f}"
    try:
        if pd.isna(value):
            return MISSING
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):  # numpy scalars
        return fmt(value.item(), digits)
    return str(value).replace("|", "\\|").replace("\n", " ")


EMPTY = "no rows: none of this table's inputs exist in this grid's results"


def markdown_table(df: pd.DataFrame, digits: dict[str, int] | None = None, empty: str = "") -> str:
    digits = digits or {}
    if df.empty:
        return f"_({empty or EMPTY})_\n"
    cols = [str(c) for c in df.columns]
    return layout.markdown(cols, ([fmt(v, digits.get(c, 3)) for c, v in zip(cols, row)]
                                  for row in df.itertuples(index=False)))


def render(table: Table) -> str:
    parts = [f"# {table.title}\n"]
    parts += [n + "\n" for n in table.notes]
    parts.append(markdown_table(table.frame, table.digits, table.empty))
    for sec in table.extra:
        parts.append(f"## {sec.title}\n")
        parts += [n + "\n" for n in sec.notes]
        parts.append(markdown_table(sec.frame, sec.digits))
    return "\n".join(parts)


def write(table: Table, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{table.name}.csv", out_dir / f"{table.name}.md"
    table.frame.to_csv(csv, index=False)
    md.write_text(render(table))
    return [csv, md]
