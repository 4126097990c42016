"""Any PyTorch segmenter as a base segmenter: a model plus the dotted name of its last classifier (its *head*).

`HeadSegmenter` runs the model's own forward pass and captures the head's input with a forward pre-hook (the
pass stops there). That input is the feature map, and the head gives the linear classifier (W, b):

- a 1x1 convolution, or an `nn.Linear` over channels (input [B, h, w, C], or [B, h*w, C] tokens of a square
  map), is used as it is;
- a k x k convolution (smp's U-Net and PSPNet heads are 3x3) is linear in the k*k*C values of each pixel's
  neighbourhood: the features are the head's input unfolded with the head's own padding and dilation
  (`F.unfold`, channel-major like the conv weight), so W.f + b is exactly what the head computes.

Inputs of a side the model does not take (`InputContract`) are padded at the bottom and right with the value of
a black pixel, as the protocol's padding, and the features are cropped back to the part that covers the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.segmenter import IMAGENET_CONTRACT, InputContract, Segmenter, cropped_side


class _HeadReached(Exception):
    """Raised by the pre-hook to stop the forward pass once the head's input is known."""

    def __init__(self, features: torch.Tensor):
        super().__init__("head reached")
        self.features = features


def find_head(model: nn.Module, head_name: str, who: str) -> nn.Module:
    """The module `head_name` of `model`: a stride-1 convolution or an nn.Linear, else a GFSSError naming `who`."""
    try:
        head = model.get_submodule(head_name)
    except AttributeError:
        raise GFSSError(f"{who} has no module {head_name!r}; name its last classifier with #head=NAME") from None
    if isinstance(head, nn.Linear):
        return head
    if not isinstance(head, nn.Conv2d):
        raise GFSSError(f"{who}: the head {head_name!r} is a {type(head).__name__}, not a Conv2d or Linear; name "
                        "the last classifier layer with #head=NAME")
    if head.groups != 1 or head.stride != (1, 1) or not isinstance(head.padding, tuple) \
            or head.padding_mode != "zeros":
        raise GFSSError(f"{who}: the head {head_name!r} is a grouped, strided or non-zero-padded convolution, "
                        "which is not a per-pixel linear classifier")
    return head


class HeadSegmenter(Segmenter):
    """A model seen as features + linear classifier through its head module (see the module docstring)."""

    def __init__(self, model: nn.Module, head_name: str, name: str,
                 input_contract: InputContract = IMAGENET_CONTRACT):
        super().__init__()
        self.model, self.head_name, self.name = model, head_name, name
        find_head(model, head_name, name)
        self.input_contract = input_contract

    @property
    def head(self) -> nn.Module:
        """The classifier module (looked up, not registered twice, so the state dict holds it once)."""
        return self.model.get_submodule(self.head_name)

    @property
    def kernel(self) -> tuple[int, int]:
        return (1, 1) if isinstance(self.head, nn.Linear) else self.head.kernel_size

    @property
    def num_features(self) -> int:
        channels = self.head.in_features if isinstance(self.head, nn.Linear) else self.head.in_channels
        return channels * self.kernel[0] * self.kernel[1]

    @property
    def num_outputs(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else self.head.out_channels

    def classifier_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.head.weight.detach().reshape(self.num_outputs, self.num_features).t().contiguous()
        bias = self.head.bias.detach().clone() if self.head.bias is not None else \
            torch.zeros(self.num_outputs, device=weight.device, dtype=weight.dtype)
        return weight, bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits W.f + b [B, B+1, h, w] at feature resolution."""
        weight, bias = self.classifier_weight_and_bias()
        features = self.extract_features(images)
        return torch.einsum("nchw,ck->nkhw", features, weight.to(features.dtype)) + bias.view(1, -1, 1, 1)

    def head_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the model's forward pass feeds its head, as [B, C, h, w]."""
        handle = self.head.register_forward_pre_hook(lambda module, args: _raise(args[0]))
        try:
            self.model(images)
        except _HeadReached as reached:
            return self._channels_first(reached.features)
        finally:
            handle.remove()
        raise GFSSError(f"{self.name}: its forward pass never calls the head {self.head_name!r}; name the module "
                        "that computes the logits with #head=NAME")

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, nn.Conv2d):
            return x
        side = math.isqrt(x.shape[1]) if x.dim() == 3 else 0
        if x.dim() == 3 and side * side == x.shape[1]:  # tokens of a square map
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2)
        raise GFSSError(f"{self.name}: the Linear head {self.head_name!r} gets a {tuple(x.shape)} input; it needs "
                        "[B, h, w, C] or the [B, h*w, C] tokens of a square map")

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images normalised this segmenter's way [B, 3, S, S] -> features [B, C (k*k*C for a k x k head), h, w]."""
        side = images.shape[-1]
        padded = self.input_contract.padded_side(side, self.name)
        if padded != side:
            images = self._pad(images, padded)
        features = self.head_input(images)
        if self.kernel != (1, 1):
            features = self._unfold(features)
        if padded != side:
            keep = cropped_side(side, padded, features.shape[-1])
            features = features[..., :keep, :keep]
        return features.contiguous()

    def _pad(self, images: torch.Tensor, padded: int) -> torch.Tensor:
        """Bottom and right padding with a black pixel's normalised value (what the protocol pads with)."""
        black = -torch.tensor(self.input_contract.mean, dtype=images.dtype, device=images.device) / \
            torch.tensor(self.input_contract.std, dtype=images.dtype, device=images.device)
        out = black.view(1, 3, 1, 1).expand(images.shape[0], 3, padded, padded).clone()
        out[..., :images.shape[-2], :images.shape[-1]] = images
        return out

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C*k*k, h, w]: each output pixel's neighbourhood as the head's conv sees it."""
        head = self.head
        height = x.shape[2] + 2 * head.padding[0] - head.dilation[0] * (head.kernel_size[0] - 1)  # stride 1
        width = x.shape[3] + 2 * head.padding[1] - head.dilation[1] * (head.kernel_size[1] - 1)
        columns = F.unfold(x, head.kernel_size, dilation=head.dilation, padding=head.padding)
        return columns.reshape(x.shape[0], -1, height, width)


def _raise(features: torch.Tensor):
    raise _HeadReached(features)
