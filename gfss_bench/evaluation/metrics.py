"""Confusion-matrix metrics. The int64 confusion matrix is the only state; everything derives from it.

Rows are ground truth, columns predictions, in the episode label space (0 background,
1..B base, B+1..B+N novel). Pixels labelled 255 are never counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_LABEL = 255

CONVENTIONS = {
    "diam": "DIaM: base mIoU over base classes (background excluded), novel mIoU over novel classes, "
            "mean = (base + novel) / 2, HM = harmonic mean",
    "pop": "POP/CAPL: background counts as a base class; total = mIoU over all classes",
}


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [K, K] counts of (target, prediction) pairs over pixels whose target is not 255."""
    target = target.reshape(-1).long()
    prediction = prediction.reshape(-1).long().to(target.device)
    keep = target != IGNORE_LABEL
    target, prediction = target[keep], prediction[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"label {int(target.max())} outside 0..{num_classes - 1} (and 255 ignore)")
    if prediction.numel() and (int(prediction.max()) >= num_classes or int(prediction.min()) < 0):
        raise ValueError(f"prediction outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def score_probabilities(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 16
                        ) -> torch.Tensor:
    """Upsample [Q, K, h, w] class scores (probabilities, or logits for a base segmenter) bilinearly
    (align_corners=True) to the label size, argmax, count (facts §4).

    Scores already at the label size (methods that decide at label resolution) are used as they are.
    """
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # counted on the probabilities' device
    labels = labels.to(probs.device)
    at_label_size = tuple(probs.shape[-2:]) == tuple(labels.shape[-2:])
    for start in range(0, probs.shape[0], chunk):
        upsampled = probs[start:start + chunk]
        if not at_label_size:
            upsampled = F.interpolate(upsampled, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        confusion += confusion_matrix(upsampled.argmax(1), labels[start:start + chunk], num_classes)
    return confusion


def per_class_iou(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
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


def scores(confusion: np.ndarray | torch.Tensor, num_base: int, convention: str = "diam") -> Scores:
    """Base/novel/mean/HM mIoU from a confusion matrix with 1 + num_base + N classes."""
    iou = per_class_iou(confusion)
    if convention == "diam":
        base, novel = _nanmean(iou[1:num_base + 1]), _nanmean(iou[num_base + 1:])
        return Scores(base, novel, (base + novel) / 2, harmonic_mean(base, novel))
    if convention == "pop":
        base, novel = _nanmean(iou[:num_base + 1]), _nanmean(iou[num_base + 1:])
        return Scores(base, novel, (base + novel) / 2, harmonic_mean(base, novel), _nanmean(iou))
    raise ValueError(f"unknown metric convention {convention!r}; choose from: {', '.join(CONVENTIONS)}")
