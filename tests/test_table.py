"""geopd.io.table: the one layout of the report's Markdown tables and the planner's text tables."""
from geopd.io.table import Column, fixed, markdown


def test_markdown_table():
    assert markdown(["run", "pct"], [["opd", "51.6"], ["sft", "–"]]) == (
        "| run | pct |\n|---|---|\n| opd | 51.6 |\n| sft | – |\n")
    assert markdown(["a"], []) == "| a |\n|---|\n"


def test_fixed_columns_lay_out_as_the_planner_prints():
    """The planner's layout: the title column left-aligned, rows indented under it, numbers right."""
    cols = [Column("per rule", 24, "<"), Column("jobs", 6), Column("GPU-h req", 12)]
    rows = [("train", 26, f"{1234.5:,.1f}"), ("evaluate", 201, "-")]
    assert fixed(cols, rows) == [
        f"{'per rule':<24}{'jobs':>6}{'GPU-h req':>12}",
        f"  {'train':<22}{26:>6}{'1,234.5':>12}",
        f"  {'evaluate':<22}{201:>6}{'-':>12}",
    ]


def test_fixed_columns_widen_to_cells_wider_than_them_never_truncate():
    """A cell wider than its column widens the column (issue 23: `nodes: 100000` once ran the
    plan's numbers together): every row stays aligned, a right-aligned cell a space apart."""
    lines = fixed([Column("x", 4, "<"), Column("n", 3), Column(" (phase)", 9, "<")],
                  [("a-long-name", 12345, " (train)"), ("b", 1, "")], indent=2)
    assert lines == ["x                 n (phase) ",
                     "  a-long-name 12345 (train) ",
                     "  b               1         "]
