"""PSPNet-ResNet50 in the layout of the released GFSS checkpoints (docs/protocol.md §6).

Module names follow the checkpoints users already have (DIaM's, after stripping `module.`):

- `layer0`: the stem, a Sequential. `deep` (DIaM's, and the semseg/PFENet `resnet50_v2` ImageNet weights):
  indices 0..9 are conv3x3(3,64,s2)-BN-ReLU-conv3x3(64,64)-BN-ReLU-conv3x3(64,128)-BN-ReLU-maxpool(3,s2,p1).
  `7x7` (torchvision's ImageNet ResNet-50, which cannot fill the deep stem): indices 0..3 are
  conv7x7(3,64,s2,p3)-BN-ReLU-maxpool(3,s2,p1), and layer1 then takes 64 channels instead of 128;
- `layer1`..`layer4`: ResNet-50 bottlenecks (conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/downsample.1), the
  3x3 conv carrying the stride; every 3x3 conv of layer3 (layer4) has dilation and padding 2 (4) and stride
  1, and their downsample convs stride 1, so the output stride is 8;
- `ppm.features.{0..3}`: AdaptiveAvgPool2d(bin)-conv1x1(2048,512,no bias)-BN-ReLU for bins 1,2,3,6,
  upsampled (bilinear, align_corners=True) and concatenated with the input: 4096 channels;
- `bottleneck`: conv3x3(4096,512,no bias)-BN-ReLU-Dropout2d(0.1);
- `classifier`: conv1x1(512, B+1).

The input side S must satisfy (S-1) % 8 == 0 (417 on the real benchmarks, 97 on the synthetic ones).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.segmenter import InputContract, Segmenter

PPM_BINS = (1, 2, 3, 6)
FEATURE_CHANNELS = 512
OUTPUT_STRIDE = 8
STEM_CHANNELS = {"deep": 128, "7x7": 64}  # stem -> layer1 input channels
STEMS = tuple(STEM_CHANNELS)
BACKBONE_MODULES = ("layer0", "layer1", "layer2", "layer3", "layer4")  # ImageNet-initialised; the rest is the head


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck with torchvision's parameter names; stride and dilation on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(in_channels: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """A ResNet stage; dilated stages (dilation > 1) use stride 1 everywhere, downsample included."""
    if dilation > 1:
        stride = 1
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    layers = [Bottleneck(in_channels, planes, stride, dilation, downsample)]
    layers += [Bottleneck(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class PPM(nn.Module):
    """Pyramid pooling: the input concatenated with its pooled, reduced and upsampled versions."""

    def __init__(self, in_channels: int, reduction_channels: int, bins=PPM_BINS):
        super().__init__()
        self.features = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduction_channels, 1, bias=False),
                          nn.BatchNorm2d(reduction_channels), nn.ReLU(inplace=True))
            for b in bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        out = [x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True) for f in self.features]
        return torch.cat(out, 1)


def _stem(kind: str) -> nn.Sequential:
    """layer0 of the given stem (see the module docstring)."""
    if kind == "deep":
        return nn.Sequential(
            _conv3x3(3, 64, stride=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            _conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            _conv3x3(64, 128), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1))
    if kind == "7x7":
        return nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    raise GFSSError(f"unknown PSPNet-ResNet50 stem {kind!r}; choose from: {', '.join(STEMS)}")


class PSPNetResNet50(Segmenter):
    """PSPNet on a dilated ResNet-50 (output stride 8, deep or 7x7 stem) with a 1x1 classifier over B+1 classes."""

    architecture = "PSPNet-ResNet50"
    input_contract = InputContract(size_step=OUTPUT_STRIDE, size_offset=1, pads=False)  # (S-1) % 8 == 0

    def __init__(self, num_outputs: int, dropout: float = 0.1, stem: str = "deep"):
        super().__init__()
        if num_outputs < 2:
            raise GFSSError(f"PSPNet-ResNet50 needs at least 2 classifier outputs (background + 1), got {num_outputs}")
        self.stem = stem
        self.layer0 = _stem(stem)
        self.layer1 = _make_layer(STEM_CHANNELS[stem], 64, 3, stride=1, dilation=1)
        self.layer2 = _make_layer(256, 128, 4, stride=2, dilation=1)
        self.layer3 = _make_layer(512, 256, 6, stride=2, dilation=2)
        self.layer4 = _make_layer(1024, 512, 3, stride=2, dilation=4)
        fea_dim = 2048
        self.ppm = PPM(fea_dim, fea_dim // len(PPM_BINS), PPM_BINS)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(fea_dim * 2, FEATURE_CHANNELS, 3, padding=1, bias=False), nn.BatchNorm2d(FEATURE_CHANNELS),
            nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(FEATURE_CHANNELS, num_outputs, 1)

    @staticmethod
    def check_input_size(images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise GFSSError(f"PSPNet-ResNet50 expects images [B, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[2:]
        if (height - 1) % OUTPUT_STRIDE or (width - 1) % OUTPUT_STRIDE:
            raise GFSSError(f"PSPNet-ResNet50 needs an input size with (H-1) % 8 == 0 and (W-1) % 8 == 0 (e.g. 417 "
                            f"or 97), got {height}x{width}")

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> layer4 output [B, 2048, (H-1)/8+1, (W-1)/8+1]."""
        self.check_input_size(images)
        x = self.layer0(images)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> post-ReLU bottleneck features [B, 512, (H-1)/8+1, (W-1)/8+1]."""
        return self.bottleneck(self.ppm(self.backbone(images)))
