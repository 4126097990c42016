"""DIaM's evaluation preprocessing (docs/protocol.md §4a), step by step as the official code does it, at any square size.

Size: with ratio = size / longer side (a float), the longer side becomes `size` and the other `int(side * ratio)`;
each side is then floored to a multiple of 8 (so 417 -> 416). Image: OpenCV `resize` of the float32 image with
`INTER_LINEAR` (no antialiasing), pasted top-left into zeros, divided by 255, then (x - mean) / std per channel,
all in float32. Label: OpenCV `resize` of the label as float32 with `INTER_NEAREST`, pasted top-left into 255.
Evaluation (queries, supports, base mIoU) goes through `preprocess` only.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255
# What `preprocess` computes; part of the on-disk feature-cache key. 1: PIL resizing (protocol version 1);
# 2: OpenCV, as the official code (protocol version 2).
PREPROCESSING_VERSION = 2


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of the resized image, with the official float arithmetic (which can differ from integer division:
    1529 x 440 at 417 gives 440 * (417 / 1529) = 119.99999999999999 -> 112, not 120).

    A side the official code would make 0 (aspect ratio above size / 8; it fails there) becomes 8."""
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {height}x{width}")
    if height >= width:
        new_h, new_w = size, int(width * (size / height))
    else:
        new_h, new_w = int(height * (size / width)), size
    return max(8, new_h // 8 * 8), max(8, new_w // 8 * 8)


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Pixel values 0..255, channels last [..., H, W, 3] (uint8 or float32) -> contiguous float32 [..., 3, H, W]:
    divided by 255, then (x - mean) / std per channel, in float32 (ImageNet's unless the segmenter states others). On the CPU this is bit for bit the official
    per-channel steps (on CUDA a division by a Python number is a multiplication by its reciprocal)."""
    channels_first = images.movedim(-1, -3)
    out = torch.empty(channels_first.shape, dtype=torch.float32, device=images.device).copy_(channels_first)
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return out.div_(255.0).sub_(mean).div_(std)  # in place on a contiguous copy: about 2x faster


def preprocess(image: np.ndarray, label: Optional[np.ndarray], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """uint8 RGB [H, W, 3] and uint8 [H, W] label (or None) -> (float32 [3, size, size] normalised with `mean`
    and `std`, int64 [size, size] label padded with 255, or None)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[:new_h, :new_w] = cv2.resize(image.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out_image = normalize(torch.from_numpy(canvas), mean, std)
    if label is None:
        return out_image, None
    if label.shape != (height, width):
        raise ValueError(f"label shape {label.shape} differs from image shape {(height, width)}")
    out_label = torch.full((size, size), IGNORE_LABEL, dtype=torch.int64)
    resized = cv2.resize(label.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    out_label[:new_h, :new_w] = torch.from_numpy(resized.astype(np.int64))
    return out_image, out_label
