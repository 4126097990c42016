"""Counting predictions into an int64 confusion matrix (torch), as the official evaluation scores
(docs/protocol.md §4a). The arithmetic on the counts is `gfss_bench.metrics`.

Rows are ground truth, columns predictions, in the episode label space; pixels labelled 255 are never counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255


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
    (align_corners=True) to the label size, argmax, count (docs/protocol.md §4).

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


def predicted_labels(probs: torch.Tensor, size) -> torch.Tensor:
    """The argmax class of [Q, K, h, w] scores upsampled as `score_probabilities` does (bilinear, align_corners=True)
    to `size`; scores already at that size are used as they are."""
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=True)
    return probs.argmax(1)


def query_confusions(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 16) -> torch.Tensor:
    """int64 [Q, K, K] on the CPU: `score_probabilities` of each query on its own (same upsampling and argmax), so
    their sum over queries is exactly the batch's confusion matrix."""
    labels = labels.to(probs.device)
    out = []
    for start in range(0, probs.shape[0], chunk):
        prediction = predicted_labels(probs[start:start + chunk], labels.shape[-2:])
        target = labels[start:start + chunk]
        queries = torch.arange(len(target), device=target.device).view(-1, *([1] * (target.dim() - 1)))
        keep = target != IGNORE_LABEL
        if target[keep].numel() and (int(target[keep].max()) >= num_classes or int(target[keep].min()) < 0):
            raise ValueError(f"label outside 0..{num_classes - 1} (and 255 ignore)")
        cells = (queries.expand_as(target) * num_classes + target.long()) * num_classes + prediction
        counts = torch.bincount(cells[keep], minlength=len(target) * num_classes * num_classes)
        out.append(counts.reshape(len(target), num_classes, num_classes).cpu())
    return torch.cat(out) if out else torch.zeros(0, num_classes, num_classes, dtype=torch.int64)


def sparse_query_counts(confusion: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """One query's [K, K] confusion as (classes, intersection, union) over the classes present in its ground truth
    or prediction only (every other class has intersection = union = 0)."""
    confusion = confusion.long()
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = torch.nonzero(union > 0).flatten()
    return present.tolist(), intersection[present].tolist(), union[present].tolist()
