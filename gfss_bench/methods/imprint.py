"""`imprint`: weight imprinting; the novel classes get their (rescaled) support prototypes, no training.

The novel prototype of class j is DIaM's initialisation (docs/protocol.md §5 step 2): the mean support
feature over every support pixel labelled B+1+j at feature resolution (nearest-downsampled masks),
L2-normalised. With `rescale` (default) it is then multiplied by the mean L2 norm of the base
classifier's weight vectors (the columns of `base_weight`), so that novel and base logits live on
the same scale. Novel biases are 0. Prediction: softmax over the base classifier followed by the
novel prototypes (base/background first, novel last).
"""

from __future__ import annotations

import torch

from gfss_bench.methods.contract import Method, Task, register_method
from gfss_bench.methods.common import check_labels, check_task_shapes, downsample_nearest, novel_prototypes


def imprinted_classifier(task: Task, rescale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [C, B+1+N] and bias [B+1+N]: the base classifier with the novel prototypes appended."""
    check_task_shapes(task)
    check_labels(task.support_labels, task.num_classes, "support labels")
    base_w, base_b = task.base_weight.float(), task.base_bias.float()
    small = downsample_nearest(task.support_labels, tuple(task.support_features.shape[-2:]))
    protos = novel_prototypes(task.support_features.float(), small, task.num_base_and_bg)
    if rescale:
        protos = protos * base_w.norm(dim=0).mean()
    weight = torch.cat([base_w, protos], dim=1)
    bias = torch.cat([base_b, base_b.new_zeros(task.num_novel)])
    return weight, bias


def classifier_probs(weight: torch.Tensor, bias: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
    """Softmax of a shared classifier over query features [Q, C, h, w] -> [Q, K, h, w]."""
    logits = torch.einsum("qchw,ck->qkhw", query_features.float(), weight) + bias.view(1, -1, 1, 1)
    return torch.softmax(logits, dim=1)


@register_method("imprint")
class Imprint(Method):
    """Imprinted novel prototypes (rescaled to the base weights' mean norm); no optimisation."""

    rescale: bool = True

    def predict(self, task: Task) -> torch.Tensor:
        weight, bias = imprinted_classifier(task, self.rescale)
        return classifier_probs(weight, bias, task.query_features)
