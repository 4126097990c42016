"""A small PSPNet-shaped segmenter for the synthetic benchmarks (output stride 8).

Same structure as the PSPNet-ResNet50 of DIaM/BAM (docs/protocol.md §6), scaled down to ~0.3M parameters:
a strided stem, residual stages (the last ones dilated instead of strided), a pyramid pooling
module (bins 1, 2, 3, 6; bilinear align_corners=True upsampling; concatenated with its input), a
3x3 conv-BN-ReLU-Dropout2d bottleneck giving the C-dimensional post-ReLU features, and a 1x1
classifier with B+1 outputs. At 97x97 input the features are 13x13 ((97-1)/8 + 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gfss_bench.models.segmenter import InputContract, Segmenter


@dataclass(frozen=True)
class SmallPSPNetConfig:
    num_outputs: int  # B + 1
    stem_channels: int = 24
    stage_channels: tuple[int, ...] = (32, 64, 80)
    ppm_channels: int = 24
    ppm_bins: tuple[int, ...] = (1, 2, 3, 6)
    feature_channels: int = 96
    dropout: float = 0.1

    def as_dict(self) -> dict:
        return asdict(self)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class PyramidPooling(nn.Module):
    def __init__(self, cin: int, reduction: int, bins: tuple[int, ...]):
        super().__init__()
        self.features = nn.ModuleList(nn.Sequential(
            nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, reduction, 1, bias=False),
            nn.BatchNorm2d(reduction), nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True)
                                for f in self.features], 1)


class SmallPSPNet(Segmenter):
    input_contract = InputContract(size_step=8, size_offset=1, pads=False)  # (S-1) % 8 == 0: 97 -> 13x13

    def __init__(self, config: SmallPSPNetConfig):
        super().__init__()
        self.config = config
        c0 = config.stem_channels
        c1, c2, c3 = config.stage_channels
        self.layer0 = conv_bn_relu(3, c0, stride=2)                      # 1/2
        self.layer1 = nn.Sequential(BasicBlock(c0, c1, stride=2), BasicBlock(c1, c1))  # 1/4
        self.layer2 = BasicBlock(c1, c2, stride=2)                        # 1/8
        self.layer3 = nn.Sequential(BasicBlock(c2, c3, dilation=2), BasicBlock(c3, c3, dilation=4))
        self.ppm = PyramidPooling(c3, config.ppm_channels, config.ppm_bins)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(c3 + config.ppm_channels * len(config.ppm_bins), config.feature_channels, 3, padding=1,
                      bias=False),
            nn.BatchNorm2d(config.feature_channels), nn.ReLU(inplace=True), nn.Dropout2d(config.dropout))
        self.classifier = nn.Conv2d(config.feature_channels, config.num_outputs, 1)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.layer0(images))))
        return self.bottleneck(self.ppm(x))


def build_small_pspnet(num_outputs: int, **overrides) -> SmallPSPNet:
    return SmallPSPNet(SmallPSPNetConfig(num_outputs=num_outputs, **overrides))
