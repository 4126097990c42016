"""Helpers shared by the methods: label checks, nearest downsampling of masks, novel prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods.contract import Task

EPS = 1e-10
IGNORE = 255


def downsample_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest downsampling of [..., H, W] integer/bool maps to [..., h, w] (long), as F.interpolate does."""
    lead = labels.shape[:-2]
    flat = labels.reshape(1, -1, *labels.shape[-2:]).float()
    small = F.interpolate(flat, size=size, mode="nearest")
    return small.reshape(*lead, *size).long()


def check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        found = sorted(set(labels[bad].unique().tolist()))[:5]
        raise GFSSError(f"{what} contain labels {found} outside the episode label space "
                        f"0..{num_classes - 1} (and 255 = ignore)")


def check_task_shapes(task: Task) -> None:
    sf, qf = task.support_features, task.query_features
    if sf.dim() != 5 or qf.dim() != 4:
        raise GFSSError(f"support_features must be [N, K, C, h, w] and query_features [Q, C, h, w]; "
                        f"got {tuple(sf.shape)} and {tuple(qf.shape)}")
    c = task.base_weight.shape[0]
    if sf.shape[2] != c or qf.shape[1] != c or sf.shape[-2:] != qf.shape[-2:]:
        raise GFSSError(f"feature shapes disagree: base_weight {tuple(task.base_weight.shape)}, "
                        f"support {tuple(sf.shape)}, query {tuple(qf.shape)}")
    if tuple(task.support_labels.shape[:2]) != tuple(sf.shape[:2]):
        raise GFSSError(f"support_labels {tuple(task.support_labels.shape)} do not match support_features "
                        f"{tuple(sf.shape)} in [N, K]")
    if task.query_valid.shape[0] != qf.shape[0]:
        raise GFSSError(f"query_valid has {task.query_valid.shape[0]} maps for {qf.shape[0]} queries")


def novel_prototypes(support_features: torch.Tensor, small_labels: torch.Tensor, num_base_and_bg: int) -> torch.Tensor:
    """L2-normalised mean support feature of each novel class, [C, N] (DIaM's initialisation).

    `small_labels` [N, K, h, w] are the support labels at feature resolution. The mean runs over every
    support pixel (of every image) labelled B+1+j; a class without pixels gets a zero vector.
    """
    n, k, c = support_features.shape[:3]
    feats = support_features.reshape(n * k, c, -1)  # [NK, C, hw]
    onehot = (small_labels.reshape(n * k, -1, 1) ==
              torch.arange(num_base_and_bg, num_base_and_bg + n, device=small_labels.device)).float()
    sums = torch.bmm(feats, onehot).sum(0)  # per image, no copy of the features
    counts = onehot.sum(dim=(0, 1))
    protos = sums / (counts + EPS)
    return protos / (protos.norm(dim=0, keepdim=True) + EPS)
