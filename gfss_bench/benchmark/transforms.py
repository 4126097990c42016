"""DIaM's evaluation preprocessing (facts §4), at any square size.

Resize so the longer side equals `size` keeping the aspect ratio, each side then floored to a
multiple of 8 (so 417 -> 416; with size 97 the longer side becomes 96); bilinear for images,
nearest for labels; pad bottom/right to size x size with 0 for the image (before normalisation,
so padded pixels become -mean/std) and 255 for the label; ImageNet mean/std normalisation.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the longer side to `size` and flooring each side to a multiple of 8."""
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {height}x{width}")
    longer = max(height, width)
    new_h = max(8, height * size // longer // 8 * 8)  # integer arithmetic: no float rounding
    new_w = max(8, width * size // longer // 8 * 8)
    return new_h, new_w


def resize_and_pad_uint8(image: np.ndarray, label: Optional[np.ndarray], size: int
                         ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The resize + pad step alone: (uint8 [size, size, 3], uint8 [size, size] or None)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    new_h, new_w = resized_shape(h, w, size)
    out_image = np.zeros((size, size, 3), dtype=np.uint8)
    out_image[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    out_label = None
    if label is not None:
        if label.shape != (h, w):
            raise ValueError(f"label shape {label.shape} differs from image shape {(h, w)}")
        out_label = np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
        out_label[:new_h, :new_w] = np.asarray(
            Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).resize((new_w, new_h), Image.NEAREST))
    return out_image, out_label


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] (channels last) -> ImageNet-normalised float32 [..., 3, H, W]."""
    images = images_uint8.float().div_(255.0).movedim(-1, -3)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images - mean) / std
