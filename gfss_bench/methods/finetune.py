"""`finetune`: imprinted initialisation, then cross-entropy fine-tuning on the support set only.

The classifier starts as in `imprint` (base classifier + rescaled novel prototypes, novel biases
0) and is trained with full-batch Adam on the plain (unweighted) cross-entropy over all
B+1+N classes, averaged over the valid support pixels at feature resolution (masks downsampled
nearest, 255 ignored). Under practical supports label 0 is background; base labels present in
standard-protocol supports are used as such. Only the novel weights and biases are trained unless
`finetune_base`. The classifier never looks at the queries, so it is shared by all of them; it is
deterministic (no sampling) and is cached for the last support set seen, so the batches of one run
that share the same support tensors train it once.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods.contract import Method, Task, register_method
from gfss_bench.methods.common import IGNORE, downsample_nearest
from gfss_bench.methods.imprint import classifier_probs, imprinted_classifier


def support_cross_entropy(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of a classifier ([C, K], [K]) on features [I, C, P] with targets [I, P] (255 ignored)."""
    logits = torch.matmul(weight.t(), feats) + bias.view(1, -1, 1)  # [I, K, P]
    return F.cross_entropy(logits, targets, ignore_index=IGNORE)


def train_classifier(task: Task, iterations: int, lr: float, finetune_base: bool,
                     history: Optional[list[float]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Imprint, then fine-tune on the support set; returns weight [C, B+1+N] and bias [B+1+N]."""
    weight, bias = imprinted_classifier(task, rescale=True)
    nb = task.num_base_and_bg
    n, k, c = task.support_features.shape[:3]
    feats = task.support_features.float().reshape(n * k, c, -1)
    targets = downsample_nearest(task.support_labels, tuple(task.support_features.shape[-2:])).reshape(n * k, -1)
    if iterations == 0 or not bool((targets != IGNORE).any()):
        return weight, bias
    novel_w = weight[:, nb:].clone().requires_grad_(True)
    novel_b = bias[nb:].clone().requires_grad_(True)
    base_w = weight[:, :nb].clone().requires_grad_(finetune_base)
    base_b = bias[:nb].clone().requires_grad_(finetune_base)
    params = [novel_w, novel_b] + ([base_w, base_b] if finetune_base else [])
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():  # the runner may call predict() under no_grad
        for _ in range(iterations):
            loss = support_cross_entropy(torch.cat([base_w, novel_w], 1), torch.cat([base_b, novel_b]), feats,
                                         targets)
            if history is not None:
                history.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.cat([base_w, novel_w], 1).detach(), torch.cat([base_b, novel_b]).detach()


class _LastSupport:
    """Single-entry cache: the classifier trained for the last (support tensors, options) seen."""

    def __init__(self) -> None:
        self.refs: tuple = ()
        self.versions: tuple = ()
        self.options: Any = None
        self.result: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def _inputs(task: Task) -> tuple[torch.Tensor, ...]:
        return (task.support_features, task.support_labels, task.base_weight, task.base_bias)

    def get(self, task: Task, options: Any):
        tensors = self._inputs(task)
        if self.result is None or options != self.options or len(self.refs) != len(tensors):
            return None
        for ref, version, tensor in zip(self.refs, self.versions, tensors):
            if ref() is not tensor or tensor._version != version:
                return None
        return self.result

    def put(self, task: Task, options: Any, result) -> None:
        tensors = self._inputs(task)
        self.refs = tuple(weakref.ref(t) for t in tensors)
        self.versions = tuple(t._version for t in tensors)
        self.options = options
        self.result = result


_CACHE = _LastSupport()


@register_method("finetune")
class Finetune(Method):
    """Imprinting + Adam fine-tuning of the (novel, optionally base) classifier on the support CE."""

    iterations: int = 100
    lr: float = 0.001
    finetune_base: bool = False

    def validate(self) -> None:
        if self.iterations < 0:
            raise GFSSError(f"option 'iterations' of method 'finetune' must be >= 0, got {self.iterations}")
        if not self.lr > 0:
            raise GFSSError(f"option 'lr' of method 'finetune' must be > 0, got {self.lr}")

    def predict(self, task: Task) -> torch.Tensor:
        options = (self.iterations, self.lr, self.finetune_base)
        cached = _CACHE.get(task, options)
        if cached is None:
            cached = train_classifier(task, self.iterations, self.lr, self.finetune_base)
            _CACHE.put(task, options, cached)
        weight, bias = cached
        return classifier_probs(weight, bias, task.query_features)
