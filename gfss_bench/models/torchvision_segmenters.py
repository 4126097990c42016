"""torchvision's DeepLabV3 and FCN segmentation models as base segmenters (the `torchvision` segmenter family).

The user's weights are a state dict of `torchvision.models.segmentation.<ARCH>(num_classes=B+1)` (optionally
with `aux_classifier.*`, `module.` prefixes, or under 'state_dict'/'model'), read with `weights_only=True`.
The network is built with `weights=None, weights_backbone=None`, so nothing is downloaded. Both heads end in a
1x1 convolution over post-ReLU features (DeepLabV3: ASPP-conv3x3-BN-ReLU; FCN: conv3x3-BN-ReLU-Dropout), so
the features are that convolution's input and the convolution is the GFSS classifier: the backbone's `out`
map passed through the head minus its last conv. Output stride: 8 for the ResNets, 16 for MobileNetV3.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.checkpoints import state_dict_mismatch, read_weights, state_dict_in, strip_module_prefix
from gfss_bench.models.segmenter import Segmenter
from gfss_bench.registry import unknown_choice_message

ARCHITECTURES = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "fcn_resnet50",
                 "fcn_resnet101")
CLASSIFIER_KEY = "classifier.4.weight"  # the last 1x1 conv of both heads


def check_architecture(architecture: str, where: str) -> None:
    if architecture not in ARCHITECTURES:
        choices = unknown_choice_message("torchvision architecture", architecture, list(ARCHITECTURES))
        raise GFSSError(f"{where}: {choices} (written ARCH=PATH)")


def build_torchvision_model(architecture: str, num_outputs: int, aux_loss: bool = False) -> nn.Module:
    """The torchvision model with random weights (no download) and `num_outputs` classes."""
    from torchvision.models import segmentation

    check_architecture(architecture, "torchvision segmenter")
    return getattr(segmentation, architecture)(weights=None, weights_backbone=None, num_classes=num_outputs,
                                               aux_loss=aux_loss)


class TorchvisionSegmenter(Segmenter):
    """A torchvision DeepLabV3/FCN model seen as features + 1x1 classifier (the auxiliary head is dropped)."""

    def __init__(self, model: nn.Module, architecture: str):
        super().__init__()
        layers = list(model.classifier.children())
        last = layers[-1]
        if not isinstance(last, nn.Conv2d) or last.kernel_size != (1, 1):
            raise GFSSError(f"torchvision {architecture}: the head does not end in a 1x1 convolution")
        self.architecture = architecture
        self.backbone = model.backbone
        self.head = nn.Sequential(*layers[:-1])
        self.classifier = last

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> the input of the head's last conv [B, C, h, w] (C = 256 DeepLabV3,
        512 FCN-ResNet)."""
        return self.head(self.backbone(images)["out"])


def load_torchvision_segmenter(architecture: str, path: Path, device="cpu") -> TorchvisionSegmenter:
    """A TorchvisionSegmenter (eval mode, float32, on `device`) from a state-dict file; the number of classes is
    read from the last classifier conv. A missing, unexpected or wrongly shaped tensor is a GFSSError."""
    check_architecture(architecture, f"torchvision weights {path}")
    path = Path(path)
    state = strip_module_prefix(state_dict_in(read_weights(path), path))
    weight = state.get(CLASSIFIER_KEY)
    if weight is None or weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise GFSSError(f"torchvision weights {path} are not a {architecture} state dict: no {CLASSIFIER_KEY!r} of "
                        "shape [B+1, C, 1, 1]")
    aux = any(key.startswith("aux_classifier.") for key in state)
    model = build_torchvision_model(architecture, int(weight.shape[0]), aux_loss=aux)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise GFSSError(f"torchvision weights {path} do not fit {architecture}: {problems}")
    model.load_state_dict(state, strict=True)
    return TorchvisionSegmenter(model, architecture).eval().to(device)
