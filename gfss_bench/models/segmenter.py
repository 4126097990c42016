"""The interface every base segmenter satisfies (docs/protocol.md §1, §5).

A segmenter is a `torch.nn.Module` whose forward pass gives logits over background + the B base
classes, computed by a 1x1 classifier on top of post-ReLU features:

    logits = classifier(extract_features(images))

GFSS methods only see the features and the classifier's weight and bias.

Each segmenter also states its input contract (`InputContract`): the normalisation its images need and the input
sides it takes. The evaluation's resizing and padding stay the protocol's; a segmenter that needs other sides pads
its input and crops its features itself (see gfss_bench.models.generic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from gfss_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from gfss_bench.errors import GFSSError


@dataclass(frozen=True)
class InputContract:
    """What a segmenter expects of its input images.

    `mean`/`std`: the per-channel normalisation after dividing pixel values by 255. Sides S with
    (S - size_offset) % size_step == 0 are taken as they are; other sides are padded up to the next such side when
    `pads` (the features are then cropped back, see `cropped_side`), else refused."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_step: int = 1
    size_offset: int = 0
    pads: bool = True

    def accepts(self, side: int) -> bool:
        return (side - self.size_offset) % self.size_step == 0

    def describe_sizes(self) -> str:
        if self.size_step == 1:
            return "any side"
        if self.size_offset:
            return f"sides with (S-{self.size_offset}) % {self.size_step} == 0"
        return f"sides that are multiples of {self.size_step}"

    def padded_side(self, side: int, who: str = "this segmenter") -> int:
        """The side the model runs at for input side `side`; a GFSSError naming `who` when it is refused."""
        if self.accepts(side):
            return side
        if not self.pads:
            raise GFSSError(f"{who} takes {self.describe_sizes()}, not {side}; choose an --image-size it takes")
        return side + (self.size_offset - side) % self.size_step

    @property
    def is_imagenet(self) -> bool:
        return tuple(self.mean) == tuple(IMAGENET_MEAN) and tuple(self.std) == tuple(IMAGENET_STD)


def cropped_side(side: int, padded: int, feature_side: int) -> int:
    """Features kept for input side `side` run padded to `padded`: the ceil(side / stride) first ones, the stride
    being padded / feature_side; feature i then sits at pixel stride * i as for unpadded inputs."""
    return -(-side * feature_side // padded)


IMAGENET_CONTRACT = InputContract()


def input_contract_of(segmenter) -> InputContract:
    """The segmenter's input contract; ImageNet's, any side, for duck-typed segmenters that state none."""
    return getattr(segmenter, "input_contract", IMAGENET_CONTRACT)


class Segmenter(nn.Module):
    """Base class: subclasses implement `extract_features` and own a 1x1 conv `classifier`."""

    classifier: nn.Conv2d
    input_contract: InputContract = IMAGENET_CONTRACT  # ImageNet normalisation, any side

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
