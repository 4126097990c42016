"""An independent PSPNet-ResNet50 built the way the official GFSS code builds it (docs/protocol.md §6), for parity tests.

Written separately from gfss_bench.models.pspnet on purpose: a semseg-style ResNet-50 with a deep base whose
stride-2 stages are turned into dilated ones afterwards by editing the modules (as the official PSPNet does),
a stem Sequential that reuses one ReLU module, and the PPM / bottleneck / classifier head. Its state dict is
what DIaM's checkpoints hold (after `module.`).
"""

import torch
import torch.nn.functional as F
from torch import nn


class OfficialBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += shortcut
        return self.relu(y)


class DeepBaseResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 128
        self.layer1 = self._stage(64, 3, 1)
        self.layer2 = self._stage(128, 4, 2)
        self.layer3 = self._stage(256, 6, 2)
        self.layer4 = self._stage(512, 3, 2)

    def _stage(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [OfficialBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [OfficialBottleneck(self.inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)


class OfficialPyramidPooling(nn.Module):
    def __init__(self, channels, reduced, bins=(1, 2, 3, 6)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x):
        pooled = [F.interpolate(branch(x), x.shape[2:], mode="bilinear", align_corners=True)
                  for branch in self.features]
        return torch.cat([x] + pooled, 1)


class OfficialPSPNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        resnet = DeepBaseResNet50()
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.conv2, resnet.bn2, resnet.relu,
                                    resnet.conv3, resnet.bn3, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        for layer, rate in ((self.layer3, 2), (self.layer4, 4)):  # dilate after construction, as the official code
            for name, module in layer.named_modules():
                if "conv2" in name:
                    module.dilation, module.padding, module.stride = (rate, rate), (rate, rate), (1, 1)
                elif "downsample.0" in name:
                    module.stride = (1, 1)
        self.ppm = OfficialPyramidPooling(2048, 512)
        self.bottleneck = nn.Sequential(nn.Conv2d(4096, 512, 3, padding=1, bias=False), nn.BatchNorm2d(512),
                                        nn.ReLU(inplace=True), nn.Dropout2d(p=0.1))
        self.classifier = nn.Conv2d(512, num_classes, 1)

    def extract_features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        return self.bottleneck(self.ppm(x))
