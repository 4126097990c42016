"""`nearest-prototype`: every pixel goes to the class whose prototype its feature is most cosine-similar to.

Each class has one unit-length prototype: background and the base classes the columns of the base classifier's
weight (normalised; the bias is not used), each novel class its normalised mean support feature (the helper
`novel_prototypes` that `imprint` and DIaM use). The probabilities are softmax(scale * cosine) over
background + base + novel. The prototypes are computed once per support set (`fit`), then every query batch
is scored against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods import Fitted, Method, Task
from gfss_bench.methods.common import check_labels, check_task_shapes, downsample_nearest, novel_prototypes


class Prototypes(Fitted):
    """Unit-length prototypes [C, B+1+N] and the softmax temperature of one support set."""

    def __init__(self, prototypes: torch.Tensor, scale: float):
        self.prototypes, self.scale = prototypes, scale

    def predict(self, task: Task) -> torch.Tensor:
        features = F.normalize(task.query_features.float(), dim=1)
        cosine = torch.einsum("qchw,ck->qkhw", features, self.prototypes)
        return torch.softmax(self.scale * cosine, dim=1)


class NearestPrototype(Method):
    """Cosine similarity to base and novel prototypes; registered by the entry point as `nearest-prototype`."""

    scale: float = 10.0  # softmax temperature: cosine similarities lie in [-1, 1]

    def validate(self) -> None:
        if not self.scale > 0:
            raise GFSSError(f"option 'scale' of method {self.name!r} must be > 0, got {self.scale}")

    def fit(self, task: Task) -> Fitted:
        check_task_shapes(task)
        check_labels(task.support_labels, task.num_classes, "support labels")
        small = downsample_nearest(task.support_labels, tuple(task.support_features.shape[-2:]))
        novel = novel_prototypes(task.support_features.float(), small, task.num_base_and_bg)
        base = F.normalize(task.base_weight.float(), dim=0)
        return Prototypes(torch.cat([base, novel], dim=1), self.scale)
