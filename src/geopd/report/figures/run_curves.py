"""One run's training curves: every scalar of its metrics.jsonl (the scalars TensorBoard and
W&B get, geopd.train.tracking.scalars), one panel each, the loss / reward / mean r_t first. Each
panel shows the raw values (thin) and a rolling mean over 2% of the run's steps (thick)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from geopd.io.jsonl import iter_jsonl
from geopd.report.figures.common import save, style, subplots
from geopd.report.figures.training import window
from geopd.train.tracking import HEADLINE, scalars

COLUMNS = 4


def curves(metrics: str | Path) -> pd.DataFrame:
    """step -> every scalar of the run's rows (a column per tag), in the order panels show them."""
    rows = [{"step": row["step"], **scalars(row)} for row in iter_jsonl(metrics)]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values("step").drop_duplicates("step", keep="last").set_index("step")
    first = [c for c in HEADLINE if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def draw(metrics: str | Path, run: str, stem: str | Path) -> list[Path]:
    df = curves(metrics)
    tags = list(df.columns)
    rows = max(1, -(-len(tags) // COLUMNS))
    w = window(len(df))
    with style():
        fig, axes = subplots(rows, COLUMNS, height=1.8)
        for ax, tag in zip(axes.ravel(), tags):
            y = pd.to_numeric(df[tag], errors="coerce")
            ax.plot(df.index, y, lw=0.5 if w > 1 else 1.1, color="0.6" if w > 1 else "C0")
            if w > 1:
                ax.plot(df.index, y.rolling(w, min_periods=1).mean(), lw=1.1, color="C0")
            ax.set_title(tag)
            ax.set_xlabel("step")
        for ax in axes.ravel()[len(tags):]:
            ax.axis("off")
        if not tags:
            axes[0, 0].text(0.5, 0.5, f"no metrics rows for {run}", ha="center", va="center",
                            transform=axes[0, 0].transAxes)
        fig.suptitle(f"{run}: {len(df)} steps" + (f" (thick: rolling mean over {w} steps)" if w > 1 else ""),
                     fontsize=9)
        return save(fig, stem)
