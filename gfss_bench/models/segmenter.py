"""The interface every base segmenter satisfies (docs/protocol.md §1, §5).

A segmenter is a `torch.nn.Module` whose forward pass gives logits over background + the B base
classes, computed by a 1x1 classifier on top of post-ReLU features:

    logits = classifier(extract_features(images))

GFSS methods only see the features and the classifier's weight and bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


class Segmenter(nn.Module):
    """Base class: subclasses implement `extract_features` and own a 1x1 conv `classifier`."""

    classifier: nn.Conv2d

    @property
    def num_features(self) -> int:
        return self.classifier.in_channels

    @property
    def num_outputs(self) -> int:
        """B + 1: background plus the base classes, in that order."""
        return self.classifier.out_channels

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images float [B, 3, S, S] -> features float [B, C, h, w] (post-ReLU)."""
        raise NotImplementedError

    def classifier_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W float [C, B+1], b float [B+1]) such that logits = einsum('nchw,ck->nkhw', f, W) + b."""
        weight = self.classifier.weight.detach().reshape(self.num_outputs, self.num_features).t().contiguous()
        bias = self.classifier.bias.detach().clone() if self.classifier.bias is not None else \
            torch.zeros(self.num_outputs, device=weight.device, dtype=weight.dtype)
        return weight, bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits float [B, B+1, h, w] at feature resolution."""
        return self.classifier(self.extract_features(images))


@dataclass(frozen=True)
class LoadedSegmenter:
    """A built segmenter with what results record about it, as an explicit record (not attributes on the module):
    `label` names the user's choice over all folds (results' `segmenter_label`, one report row), `source` where the
    weights came from (results' `provenance.segmenter_source`, e.g. path, sha256, layout)."""

    segmenter: Segmenter
    source: Optional[dict] = None
    label: Optional[str] = None
