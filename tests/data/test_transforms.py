"""The evaluation preprocessing against the official steps (docs/protocol.md §4a), rewritten here from the text with OpenCV and
torch called directly, and against hand-computed sizes and pure-numpy nearest indices."""

import numpy as np
import pytest
import torch
import cv2

from gfss_bench.models.features import _PreparedBatches
from gfss_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, preprocess, resized_shape


def official_steps(image, label, size):
    """Facts §4a, step by step: float arithmetic for the size, cv2 on float32, paste, /255, per-channel in place."""
    height, width = image.shape[:2]
    if height >= width:
        new_h, new_w = size, int(width * (size * 1.0 / height))
    else:
        new_h, new_w = int(height * (size * 1.0 / width)), size
    new_h, new_w = int(new_h / 8) * 8, int(new_w / 8) * 8
    canvas = np.zeros((size, size, 3))  # float64, as the official code allocates it
    canvas[:new_h, :new_w] = cv2.resize(np.float32(image), dsize=(new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(canvas.transpose((2, 0, 1))).float().div(255)
    for channel, mean, std in zip(tensor, IMAGENET_MEAN, IMAGENET_STD):
        channel.sub_(mean).div_(std)
    labels = np.ones((size, size)) * 255
    labels[:new_h, :new_w] = cv2.resize(label.astype(np.float32), dsize=(new_w, new_h),
                                        interpolation=cv2.INTER_NEAREST)
    return tensor, torch.from_numpy(labels).long()


def test_resized_shape_hand_computed():
    assert resized_shape(500, 375, 417) == (416, 312)  # 417 -> 416; 375 * 417 / 500 = 312.75 -> 312
    assert resized_shape(375, 500, 417) == (312, 416)
    assert resized_shape(333, 500, 417) == (272, 416)  # 277.7 -> 277 -> 272
    assert resized_shape(128, 100, 97) == (96, 72)  # 75.8 -> 75 -> 72
    assert resized_shape(96, 96, 96) == (96, 96)
    assert resized_shape(417, 417, 417) == (416, 416)
    assert resized_shape(10, 200, 97) == (8, 96)  # 4.85 -> 4 -> 0: the official code fails there; we keep 8


def test_resized_shape_uses_float_arithmetic_where_integer_division_differs():
    # 440 * 417 / 1529 is exactly 120, but 440 * (417 / 1529) = 119.99999999999999 -> 119 -> 112.
    assert 440 * 417 // 1529 == 120 and int(440 * (417 / 1529)) == 119
    assert resized_shape(1529, 440, 417) == (416, 112)
    assert resized_shape(440, 1529, 417) == (112, 416)
    assert resized_shape(225, 200, 513) == (512, 448)  # 200 * 513 / 225 = 456 exactly; float gives 455.99...


SHAPES = [  # (height, width, size): landscape, portrait, square, odd sides; shrinking and enlarging
    (375, 500, 417), (500, 375, 417), (333, 333, 417), (417, 417, 417), (251, 173, 417), (90, 120, 417),
    (101, 77, 97), (64, 128, 97), (128, 64, 97), (48, 49, 97), (1529, 440, 417), (7, 9, 17)]


@pytest.mark.parametrize("height,width,size", SHAPES)
def test_preprocess_equals_the_official_steps_bit_for_bit(height, width, size):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (height, width), dtype=np.uint8)
    label[rng.random((height, width)) < 0.1] = 255
    got_image, got_label = preprocess(image, label, size)
    want_image, want_label = official_steps(image, label, size)
    assert got_image.dtype == torch.float32 and got_image.shape == (3, size, size) and got_image.is_contiguous()
    assert got_label.dtype == torch.int64 and got_label.shape == (size, size)
    assert torch.equal(got_image, want_image)
    assert torch.equal(got_label, want_label)
    assert preprocess(image, None, size)[1] is None and torch.equal(preprocess(image, None, size)[0], want_image)


@pytest.mark.parametrize("height,width,size", SHAPES)
def test_label_nearest_picks_opencv_source_indices(height, width, size):
    """OpenCV's nearest: source index floor(d * (1 / (dst / src))) in double precision, clamped to src - 1."""
    label = (np.arange(height)[:, None] * 7 + np.arange(width)[None, :]) % 250  # every pixel tells its position
    label = label.astype(np.uint8)
    new_h, new_w = resized_shape(height, width, size)
    rows = np.minimum(np.floor(np.arange(new_h) * (1.0 / (new_h / height))).astype(np.int64), height - 1)
    cols = np.minimum(np.floor(np.arange(new_w) * (1.0 / (new_w / width))).astype(np.int64), width - 1)
    _, out = preprocess(np.zeros((height, width, 3), np.uint8), label, size)
    assert out[:new_h, :new_w].numpy().tolist() == label[rows][:, cols].tolist()
    assert (out[new_h:] == 255).all() and (out[:, new_w:] == 255).all()


def test_nearest_index_is_not_the_exact_rational_floor_everywhere():
    # 240 -> 416 columns: at 12 positions the double-precision index is one below floor(d * 240 / 416)
    label = np.tile(np.arange(240, dtype=np.uint8), (240, 1))  # value = column
    _, out = preprocess(np.zeros((240, 240, 3), np.uint8), label, 417)
    exact = (np.arange(416) * 240) // 416
    differing = np.nonzero(out[0, :416].numpy() != exact)[0]
    assert len(differing) == 12
    assert (out[0, differing].numpy() == exact[differing] - 1).all()


def test_image_padding_and_normalisation_hand_computed():
    image = np.zeros((20, 10, 3), dtype=np.uint8)
    image[...] = (10, 200, 30)
    out, label = preprocess(image, np.zeros((20, 10), np.uint8), 17)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    inside = (torch.tensor([10.0, 200.0, 30.0]) / 255.0 - mean) / std
    padding = -mean / std
    # 20x10 -> 16x8 (longer side 17 -> 16; shorter 8.5 -> 8): content rows 0..15, cols 0..7.
    assert torch.allclose(out[:, :16, :8], inside.view(3, 1, 1).expand(3, 16, 8), atol=1e-6)
    assert torch.allclose(out[:, 16:, :], padding.view(3, 1, 1).expand(3, 1, 17), atol=1e-6)
    assert torch.allclose(out[:, :, 8:], padding.view(3, 1, 1).expand(3, 17, 9), atol=1e-6)
    assert (label[:16, :8] == 0).all() and (label[16:, :] == 255).all() and (label[:, 8:] == 255).all()


def test_linear_resize_does_not_antialias_when_shrinking():
    # A 1-pixel-wide white column every 4 columns, shrunk 4x: OpenCV's linear samples between source pixels
    # (x_src = (x + 0.5) * 4 - 0.5 = 4x + 1.5, between columns 1 and 2, both black), so the lines vanish; an
    # antialiasing filter (PIL's BILINEAR) would give every output column a quarter of white.
    image = np.zeros((8, 32, 3), dtype=np.uint8)
    image[:, ::4] = 255
    out, _ = preprocess(image, None, 8)  # 8x32 -> 8x8 (the height 2 is floored to 0 and kept at 8)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out, black.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)


def test_normalize_accepts_uint8_batches_channels_last():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    out = normalize(torch.from_numpy(images))
    expected = (images.astype(np.float32) / np.float32(255) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    assert out.shape == (2, 3, 5, 4) and out.is_contiguous()
    assert np.array_equal(out.numpy(), expected.transpose(0, 3, 1, 2))  # float32 steps, bit for bit


class _Split:
    """Two (image, label) pairs, as SegmentationList.load gives them."""

    pairs = [(np.zeros((10, 12, 3), np.uint8), np.full((10, 12), 5, np.uint8)),
             (np.zeros((7, 3, 3), np.uint8), np.zeros((7, 3), np.uint8))]

    def load(self, index):
        return self.pairs[index]


def test_prepared_batches_stack_preprocessed_images_and_labels():
    images, labels = _PreparedBatches(_Split(), [[0, 1]], 9)[0]
    assert images.shape == (2, 3, 9, 9) and images.dtype == torch.float32
    assert labels.shape == (2, 9, 9) and labels.dtype == torch.uint8
    assert torch.equal(images[0], preprocess(*_Split.pairs[0], 9)[0])
    # 10x12 at size 9: h = int(10 * 0.75) = 7 floors to 0, kept at 8; w = 9 -> 8.
    assert (labels[0, :8, :8] == 5).all() and (labels[0, 8, :] == 255).all()
    assert set(torch.unique(labels[1]).tolist()) == {0, 255}


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), 8)
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4), np.uint8), None, 8)
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4, 3), np.float32), None, 8)
