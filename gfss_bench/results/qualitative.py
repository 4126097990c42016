"""The qualitative figure of `gfss-bench show`: one row per query (image, ground truth, each method's prediction)
under a header row of the support images with their masks, all label maps through one fixed palette.

Palette (episode label space): background black, base classes muted cool colours, novel classes saturated warm
colours (so a novel class is never mistaken for a base one), 255 (ignore) white. The legend names every class
shown. Works on plain arrays (`evaluation.predict.Qualitative`), never on models.
"""

from __future__ import annotations

import colorsys
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

IGNORE_COLOUR = (1.0, 1.0, 1.0)
NOVEL_COLOURS = ["#E69F00", "#D55E00", "#CC79A7", "#F0E442", "#FF0000", "#FF6DB6", "#B8860B", "#FF8C00",
                 "#C71585", "#FFD700"]
SUPPORT_ALPHA = 0.55


def _plain(text) -> str:
    return str(text).replace("$", r"\$")


def palette(num_base: int, num_novel: int) -> np.ndarray:
    """float [256, 3] RGB per episode label: 0 background, 1..B base, B+1..B+N novel, 255 ignore (white); labels
    beyond the episode are mid-grey."""
    colours = np.full((256, 3), 0.5)
    colours[0] = (0.0, 0.0, 0.0)
    for i in range(num_base):  # hues from green to blue, alternating lightness so neighbours differ
        hue = 0.28 + 0.38 * i / max(num_base - 1, 1)
        colours[1 + i] = colorsys.hls_to_rgb(hue, 0.45 if i % 2 else 0.68, 0.55)
    for i in range(num_novel):
        if i < len(NOVEL_COLOURS):
            colours[1 + num_base + i] = [int(NOVEL_COLOURS[i][k:k + 2], 16) / 255 for k in (1, 3, 5)]
        else:
            colours[1 + num_base + i] = colorsys.hls_to_rgb((0.95 + 0.1 * i / num_novel) % 1, 0.55, 0.95)
    colours[255] = IGNORE_COLOUR
    return colours


def coloured(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """A label map [h, w] (values 0..255) as RGB [h, w, 3] through the palette."""
    return colours[np.clip(label, 0, 255).astype(np.int64)]


def query_miou(prediction: np.ndarray, label: np.ndarray) -> float:
    """mIoU (%) of one prediction over the classes present in the label or the prediction (255 not scored), as
    `report --worst` ranks queries."""
    keep = label != 255
    truth, predicted = label[keep], prediction[keep]
    ious = [np.sum((truth == c) & (predicted == c)) / np.sum((truth == c) | (predicted == c))
            for c in np.union1d(truth, predicted)]
    return 100 * float(np.mean(ious)) if ious else float("nan")


def figure(shown, width_in: float = 7.0, header: bool = True) -> Figure:
    """`shown` (`evaluation.predict.Qualitative`) as a figure `width_in` inches wide."""
    colours = palette(shown.num_base, len(shown.class_names) - 1 - shown.num_base)
    columns = ["image", "ground truth"] + list(shown.methods)
    ncols = len(columns)
    panel = width_in / ncols
    aspect = float(np.mean([q.label.shape[0] / q.label.shape[1] for q in shown.queries]))
    header_rows = 1 if header and shown.supports else 0
    support_cols = max(ncols, len(shown.supports))
    header_height = (width_in / support_cols) * aspect + 0.35 if header_rows else 0.0
    height = len(shown.queries) * panel * aspect + header_height + 0.95
    fig = Figure(figsize=(width_in, height), layout="constrained")
    top, bottom = (fig.subfigures(2, 1, height_ratios=[header_height, height - header_height])
                   if header_rows else (None, fig))
    if top is not None:
        _draw_supports(top, shown, colours, support_cols)
    axes = bottom.subplots(len(shown.queries), ncols, squeeze=False)
    for row, query in enumerate(shown.queries):
        maps = [query.label] + [query.predictions[m] for m in shown.methods]
        axes[row, 0].imshow(query.image, interpolation="nearest")
        for col, (ax, label) in enumerate(zip(axes[row, 1:], maps)):
            ax.imshow(coloured(label, colours), interpolation="nearest")
            if col:
                ax.set_xlabel(f"mIoU {query_miou(label, query.label):.1f}", fontsize=6, labelpad=1)
        axes[row, 0].set_ylabel(_plain(query.name), fontsize=7)
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(_plain(columns[col]), fontsize=7)
    _legend(bottom, shown, colours)
    fig.suptitle(_plain(shown.title), fontsize=8)
    return fig


def _draw_supports(subfigure, shown, colours: np.ndarray, ncols: int) -> None:
    """The support images, each with its mask laid over it, titled with its class."""
    axes = subfigure.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    for ax, support in zip(axes, shown.supports):
        mask = (support.label > 0) & (support.label != 255)
        overlay = support.image.copy()
        overlay[mask] = (1 - SUPPORT_ALPHA) * overlay[mask] + SUPPORT_ALPHA * coloured(support.label[mask], colours)
        ax.imshow(overlay, interpolation="nearest")
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        present = [int(c) for c in np.unique(support.label[mask])]
        names = ", ".join(shown.class_names[c] for c in present if c < len(shown.class_names))
        ax.set_title(_plain(f"support: {names}"), fontsize=6)
    subfigure.suptitle("support set (masks over the images)", fontsize=7)


def _legend(subfigure, shown, colours: np.ndarray) -> None:
    """One legend entry per class present in any label map shown, plus ignore when present."""
    present: set[int] = set()
    for query in shown.queries:
        for label in [query.label, *query.predictions.values()]:
            present.update(int(v) for v in np.unique(label))
    for support in shown.supports:
        present.update(int(v) for v in np.unique(support.label))
    names = shown.class_names
    handles = [Patch(facecolor=colours[c], edgecolor="0.3", linewidth=0.4,
                     label=_plain(names[c] + (" (novel)" if c > shown.num_base else "")))
               for c in sorted(present) if c < len(names)]
    if 255 in present:
        handles.append(Patch(facecolor=colours[255], edgecolor="0.3", linewidth=0.4, label="ignore (255)"))
    subfigure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=6,
                     frameon=False)

