"""The evaluation preprocessing (resize + pad, then normalise) against hand-computed expectations (facts §4)."""

import numpy as np
import pytest
import torch

from gfss_bench.benchmark.features import _PreparedBatches
from gfss_bench.benchmark.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_and_pad_uint8, resized_shape


def test_resized_shape_floors_each_side_to_a_multiple_of_8():
    assert resized_shape(500, 375, 417) == (416, 312)  # 417 -> 416; 375*417/500 = 312.75 -> 312
    assert resized_shape(375, 500, 417) == (312, 416)
    assert resized_shape(333, 500, 417) == (272, 416)  # 277.7 -> 277 -> 272
    assert resized_shape(128, 100, 97) == (96, 72)  # 75.8 -> 75 -> 72
    assert resized_shape(96, 96, 96) == (96, 96)  # exact sizes are not lost to float rounding
    assert resized_shape(417, 417, 417) == (416, 416)


def test_image_values_padding_and_normalisation():
    image = np.zeros((20, 10, 3), dtype=np.uint8)
    image[...] = (10, 200, 30)
    label = np.zeros((20, 10), dtype=np.uint8)
    image_u8, label_t = resize_and_pad_uint8(image, label, 17)
    image_t = normalize(torch.from_numpy(image_u8))  # what the feature extractor does with each batch
    assert image_t.shape == (3, 17, 17) and image_t.dtype == torch.float32
    assert label_t.shape == (17, 17) and label_t.dtype == np.uint8
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    inside = (torch.tensor([10, 200, 30]) / 255.0 - mean) / std
    padding = -mean / std
    # 20x10 -> 16x8 (longer side 17 -> 16; shorter 8.5 -> 8): content rows 0..15, cols 0..7.
    assert torch.allclose(image_t[:, :16, :8], inside.view(3, 1, 1).expand(3, 16, 8), atol=1e-5)
    assert torch.allclose(image_t[:, 16:, :], padding.view(3, 1, 1).expand(3, 1, 17), atol=1e-6)
    assert torch.allclose(image_t[:, :, 8:], padding.view(3, 1, 1).expand(3, 17, 9), atol=1e-6)
    assert (label_t[:16, :8] == 0).all() and (label_t[16:, :] == 255).all() and (label_t[:, 8:] == 255).all()


def test_label_nearest_resize_hand_computed():
    # 20x10 label: columns 0-4 -> 1, 5-9 -> 2; rows 10-19 add 10.
    label = np.zeros((20, 10), dtype=np.uint8)
    label[:, :5], label[:, 5:] = 1, 2
    label[10:] += 10
    image = np.zeros((20, 10, 3), dtype=np.uint8)
    _, out = resize_and_pad_uint8(image, label, 17)
    # Nearest 10 -> 8 columns samples source columns floor((x + 0.5) * 10 / 8) = 0,1,3,4,5,6,8,9.
    # Nearest 20 -> 16 rows samples floor((y + 0.5) * 1.25): rows 0..7 -> 0..9, rows 8..15 -> 10..19.
    expected_row = [1, 1, 1, 1, 2, 2, 2, 2]
    assert out[:8, :8].tolist() == [expected_row] * 8
    assert out[8:16, :8].tolist() == [[v + 10 for v in expected_row]] * 8
    assert (out[16:] == 255).all() and (out[:, 8:] == 255).all()
    assert set(np.unique(out).tolist()) == {1, 2, 11, 12, 255}  # nearest: no interpolated labels


def test_bilinear_image_resize_interpolates():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, 8:] = 255
    out, _ = resize_and_pad_uint8(image, None, 8)  # 16x16 -> 8x8
    assert out.shape == (8, 8, 3)
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255
    assert 0 < out[0, 3, 0] < 255 or 0 < out[0, 4, 0] < 255  # a blended column at the edge


class _Split:
    """Two (image, label) pairs, as SegmentationList.load gives them."""

    pairs = [(np.zeros((10, 12, 3), np.uint8), np.full((10, 12), 5, np.uint8)),
             (np.zeros((7, 3, 3), np.uint8), np.zeros((7, 3), np.uint8))]

    def load(self, index):
        return self.pairs[index]


def test_prepared_batches_stack_resized_images_and_labels():
    images, labels = _PreparedBatches(_Split(), [[0, 1]], 9)[0]
    assert images.shape == (2, 9, 9, 3) and labels.shape == (2, 9, 9)
    # 10x12 at size 9: h = 10*9//12 = 7 floors to 0, clamped to the minimum 8; w = 9 -> 8.
    assert (labels[0, :8, :8] == 5).all() and (labels[0, 8, :] == 255).all()
    assert set(torch.unique(labels[1]).tolist()) == {0, 255}


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        resize_and_pad_uint8(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), 8)
    with pytest.raises(ValueError):
        resize_and_pad_uint8(np.zeros((4, 4), np.uint8), None, 8)
