"""Figures for papers (matplotlib, no display needed): grouped bars, novel mIoU vs. shots, the base-vs-novel
trade-off with iso-HM curves, and per-class IoU heat-maps.

Labels, class names and titles are drawn as plain text (`plain`: no mathtext). Colours are the Okabe-Ito palette
(distinguishable with the common colour-vision deficiencies) and every series also differs by hatch or marker, so
figures survive greyscale printing. Every builder returns a
`matplotlib.figure.Figure` (never pyplot state), so callers and tests can inspect the artists. The leaderboard
figures draw the own rows of a `board.Leaderboard` group, with its labels and order.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gfss_bench.results.board import Group, Leaderboard
from gfss_bench.results.tables import GROUP_COLUMNS, convention_title, group_title, per_class_frame, per_class_matrix

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
METRIC_STYLE = {  # metric column -> (legend label, colour, hatch)
    "base_miou": ("base mIoU", "#0072B2", ""),
    "novel_miou": ("novel mIoU", "#D55E00", "//"),
    "hm_miou": ("harmonic mean", "#009E73", ".."),
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
KINDS = ("bars", "shots", "tradeoff", "classes", "confusion")


Style = tuple[str, str]  # (colour, marker) of one method label


def method_styles(labels: Iterable[str]) -> dict[str, Style]:
    """One (colour, marker) per label, assigned over all the given labels in sorted order, so that a method keeps
    its style in every figure drawn from the same results folder (pass every stored label, not one figure's).
    Okabe-Ito's yellow is left out: too pale for a marker or a line on white."""
    colours = [c for c in OKABE_ITO if c != "#F0E442"]
    ordered = sorted(set(labels))
    return {label: (colours[i % len(colours)], MARKERS[(i + i // len(colours)) % len(MARKERS)])
            for i, label in enumerate(ordered)}


def board_labels(results: Iterable[dict]) -> list[str]:
    """The row labels of every group of the results' leaderboard (what the figures name the methods)."""
    return [row.label for group in Leaderboard.build(results).groups for row in group.own_rows()]


def plain(text) -> str:
    """`text` drawn as it is: matplotlib reads a string with two `$` as mathtext (which fails on input such as
    `a$x^{$b`), so every `$` is escaped; the escape is removed when the text is drawn."""
    return str(text).replace("$", r"\$")


def _labels(group: Group) -> list[str]:
    return [plain(row.label + (" (incomplete)" if row.incomplete else "")) for row in group.own_rows()]


def _title(ax, figure: Figure, title: str) -> None:
    """The axes title in 9 pt, wrapped to the figure's width (about 13 characters per inch)."""
    ax.set_title(textwrap.fill(plain(title), int(figure.get_figwidth() * 13)), fontsize=9)


def _labels_plain(group: Group) -> list[str]:
    return [row.label for row in group.own_rows()]


def _column(group: Group, metric: str, field: str = "value") -> np.ndarray:
    return np.array([getattr(row.cells[metric], field) for row in group.own_rows()], dtype=float)


def bars_figure(group: Group, title: str = "") -> Figure:
    """Grouped bars: per own row (in the model's order), base / novel / HM mIoU (fold means) with ± std over
    runs as error bars."""
    labels = _labels(group)
    figure = Figure(figsize=(max(4.8, 1.3 * len(labels) + 1.5), 3.8), layout="constrained")
    ax = figure.add_subplot()
    x = np.arange(len(labels))
    width = 0.26
    for i, (metric, (name, colour, hatch)) in enumerate(METRIC_STYLE.items()):
        std = _column(group, metric, "std")
        ax.bar(x + (i - 1) * width, _column(group, metric), width, label=name, color=colour,
               hatch=hatch, edgecolor="white", linewidth=0.5,
               yerr=np.where(np.isnan(std), 0, std), capsize=2, error_kw={"linewidth": 0.8})
    crowded = len(labels) > 3
    ax.set_xticks(x, labels, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    _title(ax, figure, title)
    figure.legend(fontsize=8, ncols=3, loc="outside lower center", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return figure


def shots_figure(groups: Sequence[Group], title: str = "", styles: Optional[dict[str, Style]] = None) -> Figure:
    """Novel mIoU (fold means, ± std over runs) against the number of shots, one line per row label stored at
    two or more shot counts (the others are named in a note), from groups that differ only in their shot count."""
    figure = Figure(figsize=(4.8, 3.6), layout="constrained")
    ax = figure.add_subplot()
    points = pd.DataFrame([{"label": row.label, "shot": group.shot, "novel": row.cells["novel_miou"].value,
                            "std": row.cells["novel_miou"].std} for group in groups for row in group.own_rows()])
    styles = styles or method_styles(points["label"])
    single = sorted(label for label, rows in points.groupby("label") if rows["shot"].nunique() < 2)
    for label, rows in points[~points["label"].isin(single)].groupby("label", sort=True):
        rows = rows.sort_values("shot")
        std = rows["std"].to_numpy(dtype=float)
        colour, marker = styles[label]
        ax.errorbar(rows["shot"].to_numpy(), rows["novel"].to_numpy(dtype=float),
                    yerr=np.where(np.isnan(std), 0, std), label=plain(label), color=colour, marker=marker,
                    capsize=3, linewidth=1.5)

    shots = sorted({group.shot for group in groups})
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per novel class (K)")
    ax.set_ylabel("novel mIoU (%)")
    _title(ax, figure, title)
    ax.grid(alpha=0.3)
    note = textwrap.fill(plain("not drawn, one shot count stored: " + ", ".join(single)), 40) if single else None
    ax.legend(fontsize=8, frameon=False, title=note, title_fontsize=6, alignment="left")
    return figure


def tradeoff_figure(group: Group, title: str = "", iso_hm: Sequence[float] = (20, 40, 60, 80),
                    styles: Optional[dict[str, Style]] = None) -> Figure:
    """Base vs. novel mIoU, one point per own row with ± std over runs as error bars, and dashed curves of
    constant harmonic mean labelled beyond the right edge (never on a curve)."""
    figure = Figure(figsize=(5.2, 4.2), layout="constrained")
    ax = figure.add_subplot()
    for h in iso_hm:
        base = np.linspace(h / 2 + 1e-3, 100, 400)
        novel = h * base / (2 * base - h)
        keep = novel <= 100
        ax.plot(base[keep], novel[keep], linestyle="--", color="0.6", linewidth=0.8, gid="iso-hm")
        ax.annotate(f"HM {h:g}", (100, h * 100 / (200 - h)), xytext=(3, 0), textcoords="offset points",
                    fontsize=7, color="0.4", ha="left", va="center", annotation_clip=False)
    styles = styles or method_styles(row.label for row in group.own_rows())
    for label, row in zip(_labels(group), group.own_rows()):
        colour, marker = styles[row.label]
        base, novel = row.cells["base_miou"], row.cells["novel_miou"]
        ax.errorbar([base.value], [novel.value], xerr=[np.nan_to_num(base.std)], yerr=[np.nan_to_num(novel.std)],
                    fmt=marker, markersize=7, color=colour, markeredgecolor="black", markeredgewidth=0.5,
                    ecolor=colour, elinewidth=1, capsize=2, label=label, zorder=3)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("base mIoU (%)")
    ax.set_ylabel("novel mIoU (%)")
    _title(ax, figure, title)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return figure


def class_heatmap_figure(frame: pd.DataFrame, title: str = "", order: Sequence[str] = ()) -> Figure:
    """Per-class IoU of one fold: methods (rows, in `order` when given: the tables' order) x episode classes
    (columns), the value in each cell; novel classes in bold."""
    matrix = per_class_matrix(frame)
    rank = {label: i for i, label in enumerate(order)}
    matrix = matrix[sorted(matrix.columns, key=lambda label: (rank.get(label, len(rank)), str(label)))]
    values = matrix.to_numpy(dtype=float).T                     # methods x classes
    names = [plain(name) for name in matrix.index.get_level_values("class_name")]
    roles = list(matrix.index.get_level_values("role"))
    figure = Figure(figsize=(max(5.0, 0.32 * len(names) + 2.5), 1.0 + 0.45 * len(matrix.columns) + 1.2),
                    layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 60 else "white")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    for tick, role in zip(ax.get_xticklabels(), roles):
        if role == "novel":
            tick.set_fontweight("bold")
            tick.set_color("#D55E00")
    ax.set_yticks(range(len(matrix.columns)), [plain(c) for c in matrix.columns], fontsize=8)
    ax.set_xlabel("class (novel classes in bold orange)")
    _title(ax, figure, title)
    figure.colorbar(image, ax=ax, label="IoU (%)", fraction=0.04)
    return figure


def make_figures(results: Iterable[dict], kinds: Sequence[str] = KINDS, style_labels: Iterable[str] = ()
                 ) -> list[tuple[str, Figure]]:
    """All requested figures for the results, as (file stem, Figure) pairs; methods are styled over their labels
    and `style_labels` (every label stored in the folder, so that a method looks the same in every figure)."""
    results = list(results)
    board = Leaderboard.build(results)
    styles = method_styles([*board_labels(results), *style_labels])
    figures: list[tuple[str, Figure]] = []
    if not board.groups:
        return figures
    for group in board.groups:
        stem = f"{group.benchmark}-{group.protocol}-{group.shot}shot-{group.convention}"
        if "bars" in kinds:
            figures.append((f"bars-{stem}", bars_figure(group, group.title)))
        if "tradeoff" in kinds:
            figures.append((f"tradeoff-{stem}", tradeoff_figure(group, group.title, styles=styles)))
    if "shots" in kinds:
        by_setting: dict[tuple, list[Group]] = {}
        for group in board.groups:
            by_setting.setdefault((group.benchmark, group.protocol, group.convention), []).append(group)
        for key, groups in by_setting.items():
            if len(groups) > 1:
                title = f"{key[0]}, {key[1]} protocol, {convention_title(key[2])}"
                figures.append((f"shots-{'-'.join(key)}", shots_figure(groups, title, styles)))
    if "classes" in kinds:
        classes = per_class_frame(results)
        if not classes.empty:
            for key, group in classes.groupby(GROUP_COLUMNS + ["fold"], sort=True):
                benchmark, protocol, convention, shot, fold = key
                order = next((_labels_plain(g) for g in board.groups if g.key == tuple(key[:4])), [])
                figures.append((f"classes-{benchmark}-{protocol}-{shot}shot-{convention}-fold{fold}",
                                class_heatmap_figure(group, f"{group_title(*key[:4])}, fold {fold}: per-class IoU",
                                                     order)))
    if "confusion" in kinds:
        from gfss_bench.results.confusion import confusion_figures
        figures += confusion_figures(results)
    return figures


def save_figures(figures: Iterable[tuple[str, Figure]], out_dir: Path | str, fmt: str = "png",
                 dpi: int = 200) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, figure in figures:
        path = out_dir / f"{stem}.{fmt}"
        figure.savefig(path, dpi=dpi, metadata={"Software": "gfss-bench"} if fmt == "png" else None)
        paths.append(path)
    return paths
