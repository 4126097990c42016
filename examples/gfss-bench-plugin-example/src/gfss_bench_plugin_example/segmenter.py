"""`pooled`: the built-in synthetic segmenter with its features average-pooled by a factor (`--segmenter pooled:2`).

A 1x1 classifier is linear, so it commutes with average pooling: the pooled segmenter's logits are the pooled
logits of the built-in one, at a coarser output stride (16 for a factor of 2). The built-in weights are fixed by
the package, so the factor alone identifies the segmenter in the run spec (`pooled:2`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.models import Segmenter
from gfss_bench.models.families import SegmenterContext, SegmenterFamily


class PooledFeatures(Segmenter):
    """Another segmenter's features, average-pooled over `factor` x `factor` windows (partial ones at the edge)."""

    def __init__(self, inner: Segmenter, factor: int):
        super().__init__()
        self.inner, self.factor = inner, factor
        self.classifier = inner.classifier

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.inner.extract_features(images)
        return F.avg_pool2d(features, self.factor, ceil_mode=True)


class PooledBuiltin(SegmenterFamily):
    description = "example plugin: the built-in synthetic segmenter, features average-pooled by REF (e.g. pooled:2)"

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        factor = reference or "2"
        if not factor.isdigit() or int(factor) < 1:
            raise GFSSError(f"--segmenter {self.name}:{reference}: the pooling factor must be a positive integer")
        return f"{self.name}:{int(factor)}", str(int(factor))

    def build(self, reference: str, context: SegmenterContext) -> Segmenter:
        from gfss_bench.models import builtin_segmenter

        inner = builtin_segmenter(context.benchmark.name, context.fold, context.protocol, device=context.device)
        return PooledFeatures(inner, int(reference)).eval()
