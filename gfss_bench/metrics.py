"""Confusion-matrix arithmetic (no torch). The int64 confusion matrix is the only state; everything derives from it.

Rows are ground truth, columns predictions, in the episode label space (0 background,
1..B base, B+1..B+N novel). Pixels labelled 255 are never counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONVENTIONS = {
    "diam": "DIaM: base mIoU over base classes (background excluded), novel mIoU over novel classes, "
            "mean = (base + novel) / 2, HM = harmonic mean",
    "pop": "POP/CAPL: background counts as a base class; total = mIoU over all classes",
}


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the union is 0 (class absent from labels and predictions)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


@dataclass(frozen=True)
class Scores:
    """Fractions in [0, 1]; `total` is only defined in the POP convention."""

    base: float
    novel: float
    mean: float
    hm: float
    total: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"base": self.base, "novel": self.novel, "mean": self.mean, "hm": self.hm, "total": self.total}


def scores(confusion: np.ndarray, num_base: int, convention: str = "diam") -> Scores:
    """Base/novel/mean/HM mIoU from a confusion matrix with 1 + num_base + N classes."""
    iou = per_class_iou(confusion)
    if convention == "diam":
        base, novel = _nanmean(iou[1:num_base + 1]), _nanmean(iou[num_base + 1:])
        return Scores(base, novel, (base + novel) / 2, harmonic_mean(base, novel))
    if convention == "pop":
        base, novel = _nanmean(iou[:num_base + 1]), _nanmean(iou[num_base + 1:])
        return Scores(base, novel, (base + novel) / 2, harmonic_mean(base, novel), _nanmean(iou))
    raise ValueError(f"unknown metric convention {convention!r}; choose from: {', '.join(CONVENTIONS)}")
