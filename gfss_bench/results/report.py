"""The rich terminal tables of `gfss-bench report`: renderers of `results.tables` and `results.board` (which hold
the data and its aggregation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gfss_bench.results.tables import (
    GROUP_COLUMNS, METRIC_TITLES, format_value, group_metrics, group_title, per_class_matrix, row_marks)

if TYPE_CHECKING:
    from gfss_bench.results.board import Leaderboard


ROW_STYLES = {"published": "cyan", "delta": "magenta"}


def print_leaderboard(board: "Leaderboard", console: Optional[Console] = None) -> None:
    """Render a `board.Leaderboard` as one rich table per group; best cells in bold green, notes below."""
    console = console or Console()
    if not board.groups:
        console.print("no results stored yet: run `gfss-bench run --method diam --protocol practical`")
        return
    for group in board.groups:
        print_title(console, group.title, f"{group.versions_text}; mIoU %, fold means ± std over runs")
        table = Table()
        table.add_column("method")
        table.add_column("folds", justify="right")
        for m in group.metrics:
            table.add_column(METRIC_TITLES[m], justify="right")
        for row in group.rows:
            label = escape(row.label)
            style = "dim" if row.older_version else ROW_STYLES.get(row.kind)
            if style:
                label = f"[{style}]{label}[/]"
            folds = f"[yellow]{row.folds_text} incomplete[/]" if row.incomplete else row.folds_text
            cells = [cell.text() for cell in row.cells.values()]
            table.add_row(label, folds, *(f"[bold green]{text}[/]" if cell.is_best else text
                                          for text, cell in zip(cells, row.cells.values())))
        console.print(table)
        for note in group.notes:  # wrapped at the terminal's width, not the table's
            console.print(escape(note), style="dim")


def print_title(console: Console, *lines: str) -> None:
    """A table's title as its own lines (a rich table title would wrap at the table's width)."""
    console.print(escape(lines[0]), style="bold")
    for line in lines[1:]:
        console.print(escape(line))


def print_per_fold(folds: pd.DataFrame, console: Optional[Console] = None) -> None:
    """The fold breakdown: one row per method setting x fold, mean ± std over that fold's runs."""
    console = console or Console()
    if folds.empty:
        return
    folds = folds.assign(label=row_marks(folds)[0])
    for key, group in folds.groupby(GROUP_COLUMNS, sort=True):
        metrics = group_metrics(key[2])
        print_title(console, group_title(*key), "per fold; mIoU %, mean ± std over runs")
        table = Table()
        for name in ["method", "fold", "runs"] + [METRIC_TITLES[m] for m in metrics]:
            table.add_column(name, justify="left" if name == "method" else "right")
        for _, row in group.sort_values(["label", "fold"], kind="stable").iterrows():
            table.add_row(escape(row["label"]), str(row["fold"]), str(row["runs"]),
                          *(format_value(row[m], row[f"{m[:-5]}_std"]) for m in metrics))
        console.print(table)


def print_per_class(frame: pd.DataFrame, console: Optional[Console] = None) -> None:
    """Per group and fold: a table of classes (with their role) x methods."""
    console = console or Console()
    if frame.empty:
        console.print("no per-class data: the selected results hold no confusion matrices")
        return
    for key, group in frame.groupby(GROUP_COLUMNS + ["fold"], sort=True):
        benchmark, protocol, convention, shot, fold = key
        matrix = per_class_matrix(group)
        print_title(console, group_title(benchmark, protocol, convention, shot),
                    f"fold {fold}: per-class IoU (%, mean over runs)")
        table = Table()
        table.add_column("class")
        table.add_column("role")
        for label in matrix.columns:
            table.add_column(escape(str(label)), justify="right")
        for (index, class_id, name, role), values in matrix.iterrows():
            style = "bold" if role == "novel" else ""
            table.add_row(f"[{style}]{escape(str(name))}[/]" if style else escape(str(name)), role,
                          *(format_value(v) for v in values))
        console.print(table)
