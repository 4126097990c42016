"""Where the pixels of each class go, from the stored confusion matrices (summed over a result's runs): the
row-normalised matrix (ground truth rows, prediction columns) with its base and novel blocks, and per novel class
the share of its pixels predicted as itself, as background, as a base class (naming the top one) and as another
novel class. Class names come from the result files."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gfss_bench.results.describe import described
from gfss_bench.results.tables import GROUP_COLUMNS, group_title, row_marks, fold_rows

SHARE_STYLE = {  # summary column -> (legend label, colour, hatch)
    "itself": ("itself", "#009E73", ""),
    "background": ("background", "#BBBBBB", ""),
    "base": ("a base class", "#0072B2", "//"),
    "other_novel": ("another novel class", "#D55E00", ".."),
}


@dataclass
class Confusion:
    """One result's confusion matrix summed over its runs, with what is needed to label it."""

    label: str
    key: tuple  # GROUP_COLUMNS + fold
    matrix: np.ndarray
    names: list[str]
    num_base: int


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of that ground-truth class's pixels per prediction); NaN rows where
    the class has no pixel."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, matrix / np.where(totals > 0, totals, 1), np.nan)


def confusions(results: Iterable[dict]) -> list[Confusion]:
    """The summed confusion of every result with stored matrices and class names, labelled as in the tables."""
    results = [r for r in described(results) if r.get("class_names")
               and any(run.get("confusion") is not None for run in r.get("runs", []))]
    labels = row_marks(fold_rows(results))[0]
    out = []
    for result, label in zip(results, labels):
        spec = result["spec"]
        matrix = sum(np.asarray(run["confusion"], dtype=np.int64) for run in result["runs"]
                     if run.get("confusion") is not None)
        out.append(Confusion(label, tuple(spec[c] for c in GROUP_COLUMNS) + (spec["fold"],), matrix,
                             list(result["class_names"]), int(result.get("num_base", 0))))
    return out


def novel_summary(entry: Confusion) -> pd.DataFrame:
    """Per novel class: the shares (%) of its pixels predicted as itself, background, a base class (and the top
    base class) and another novel class."""
    shares = row_normalised(entry.matrix) * 100
    base = slice(1, entry.num_base + 1)
    rows = []
    for index in range(entry.num_base + 1, len(entry.names)):
        row = shares[index]
        novel = row[entry.num_base + 1:]
        top = int(np.argmax(row[base])) + 1 if entry.num_base and not np.isnan(row).all() else None
        rows.append({"class": entry.names[index], "itself": row[index], "background": row[0],
                     "base": row[base].sum(), "top_base": entry.names[top] if top else "",
                     "top_base_share": row[top] if top else float("nan"),
                     "other_novel": novel.sum() - row[index]})
    return pd.DataFrame(rows, columns=["class", "itself", "background", "base", "top_base", "top_base_share",
                                       "other_novel"])


def _plain(text) -> str:
    return str(text).replace("$", r"\$")


def matrix_figure(entries: list[Confusion], title: str = "") -> Figure:
    """One row-normalised matrix per method (side by side), base and novel blocks framed and labelled."""
    size = len(entries[0].names)
    side = min(7.0, max(3.0, 0.16 * size + 1.2))
    ncols = min(2, len(entries))
    nrows = -(-len(entries) // ncols)
    figure = Figure(figsize=(side * ncols + 0.8, (side + 0.5) * nrows + 0.4), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(entries):]:
        ax.set_axis_off()
    for ax, entry in zip(axes, entries):
        image = ax.imshow(np.ma.masked_invalid(row_normalised(entry.matrix)), cmap="Blues", vmin=0, vmax=1)
        names = [_plain(n) for n in entry.names]
        fontsize = 7 if size <= 25 else 4
        ax.set_xticks(range(size), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(size), names, fontsize=fontsize)
        for edge in (0.5, entry.num_base + 0.5):
            ax.axhline(edge, color="#D55E00", linewidth=0.9)
            ax.axvline(edge, color="#D55E00", linewidth=0.9)
        for index, tick in enumerate(ax.get_xticklabels() + ax.get_yticklabels()):
            if index % size > entry.num_base:  # a novel class
                tick.set_color("#D55E00")
        ax.set_xlabel("prediction (novel classes in orange)", fontsize=8)
        ax.set_ylabel("ground truth", fontsize=8)
        ax.set_title(_plain(entry.label), fontsize=9, pad=14)  # above the base/novel block labels
        for start, stop, name in ((1, entry.num_base + 1, "base"), (entry.num_base + 1, size, "novel")):
            if stop > start:
                ax.text((start + stop - 1) / 2, -0.5, name, ha="center", va="bottom", fontsize=7,
                        color="#D55E00" if name == "novel" else "0.3")
    figure.colorbar(image, ax=list(axes), label="share of the ground-truth class's pixels", shrink=0.6)
    if title:
        figure.suptitle(textwrap.fill(_plain(title), int(figure.get_figwidth() * 13)), fontsize=9)
    return figure


def summary_figure(entries: list[Confusion], title: str = "") -> Figure:
    """Per method, one stacked horizontal bar per novel class: itself / background / base / other novel (%), the
    top base class named at the end of the bar."""
    summaries = [novel_summary(entry) for entry in entries]
    height = 0.35 * len(summaries[0]) + 1.4
    figure = Figure(figsize=(3.4 * len(entries) + 0.6, height), layout="constrained")
    axes = figure.subplots(1, len(entries), squeeze=False, sharey=True)[0]
    for ax, entry, summary in zip(axes, entries, summaries):
        y = np.arange(len(summary))
        left = np.zeros(len(summary))
        for column, (name, colour, hatch) in SHARE_STYLE.items():
            values = summary[column].fillna(0).to_numpy()
            ax.barh(y, values, left=left, color=colour, hatch=hatch, edgecolor="white", linewidth=0.5, label=name)
            left += values
        named = [(row_y, row) for row_y, (_, row) in zip(y, summary.iterrows())
                 if row["top_base"] and row["top_base_share"] >= 1]
        for row_y, row in named:
            ax.text(101, row_y, f"{_plain(row['top_base'])} {row['top_base_share']:.0f}%", va="center",
                    fontsize=6, color="#0072B2")
        ax.set_yticks(y, [_plain(c) for c in summary["class"]], fontsize=8)
        ax.set_xlim(0, 135 if named else 100)  # room for the top base class names
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("share of the class's pixels (%)", fontsize=8)
        ax.set_title(_plain(entry.label), fontsize=9)
    axes[0].invert_yaxis()  # the first novel class on top (the axes share y: inverting one inverts all)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=7, frameon=False)
    if title:
        figure.suptitle(textwrap.fill(_plain(title), int(figure.get_figwidth() * 13)), fontsize=9)
    return figure


def confusion_figures(results: Iterable[dict]) -> list[tuple[str, Figure]]:
    """(file stem, figure) pairs: the matrices and the novel summary of every (benchmark, protocol, convention,
    shot, fold)."""
    by_key: dict[tuple, list[Confusion]] = {}
    for entry in confusions(results):
        by_key.setdefault(entry.key, []).append(entry)
    figures = []
    for key in sorted(by_key, key=lambda k: tuple(str(v) for v in k)):
        entries = sorted(by_key[key], key=lambda e: e.label)
        benchmark, protocol, convention, shot, fold = key
        stem = f"{benchmark}-{protocol}-{shot}shot-{convention}-fold{fold}"
        where = f"{group_title(benchmark, protocol, convention, shot)}, fold {fold}"
        figures.append((f"confusion-{stem}", matrix_figure(entries, f"{where}: row-normalised confusion")))
        figures.append((f"novel-{stem}", summary_figure(entries, f"{where}: where novel pixels go")))
    return figures
