"""`base`: the frozen base segmenter alone; never predicts a novel class (the base-mIoU reference row)."""

from __future__ import annotations

import torch

from gfss_bench.methods.contract import Method, Task, register_method


@register_method("base")
class BaseOnly(Method):
    def predict(self, task: Task) -> torch.Tensor:
        logits = torch.einsum("qchw,ck->qkhw", task.query_features, task.base_weight)
        logits = logits + task.base_bias.view(1, -1, 1, 1)
        probs = torch.softmax(logits, dim=1)
        novel = probs.new_zeros(probs.shape[0], task.num_novel, *probs.shape[2:])
        return torch.cat([probs, novel], dim=1)
