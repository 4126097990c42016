"""The synthetic generator: determinism, label validity, void borders, VOC layout, support eligibility."""

import numpy as np
import pytest
from PIL import Image

from gfss_bench.data import synthetic
from gfss_bench.data.datasets import SegmentationList
from gfss_bench.protocols import get_benchmark


def test_same_seed_same_sample_and_different_indices_differ():
    image_a, label_a = synthetic.generate_sample("train", 7)
    image_b, label_b = synthetic.generate_sample("train", 7)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    image_c, _ = synthetic.generate_sample("train", 8)
    image_d, _ = synthetic.generate_sample("val", 7)
    image_e, _ = synthetic.generate_sample("train", 7, seed=synthetic.SEED + 1)
    for other in (image_c, image_d, image_e):
        assert other.shape != image_a.shape or not np.array_equal(other, image_a)


def test_sizes_label_values_and_void_borders():
    sizes = set()
    for index in range(40):
        image, label = synthetic.generate_sample("val", index)
        h, w = label.shape
        assert image.shape == (h, w, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
        assert 64 <= min(h, w) and 96 <= max(h, w) <= 128
        sizes.add((h, w))
        values = set(np.unique(label).tolist())
        assert values <= set(range(0, 21)) | {255}
        assert values & set(range(1, 21)), "every scene has at least one visible object"
        assert 255 in values
        # Void separates every pair of different labels: no two 4-neighbours hold different non-void labels.
        for a, b in ((label[1:, :], label[:-1, :]), (label[:, 1:], label[:, :-1])):
            clash = (a != b) & (a != 255) & (b != 255)
            assert not clash.any()
        # ... and the band is thin: void pixels are a small fraction of the image.
        assert (label == 255).mean() < 0.25
    assert len(sizes) > 20, "image sizes vary"


def test_classes_have_distinct_shape_texture_pairs():
    pairs = {(synthetic.SHAPES[(c - 1) % len(synthetic.SHAPES)], synthetic.TEXTURES[c - 1]) for c in range(1, 21)}
    assert len(pairs) == 20
    assert len(set(synthetic.TEXTURES)) == 20


def test_write_dataset_voc_layout_and_read_back(tmp_path):
    root = synthetic.write_dataset(tmp_path / "v", sizes={"train": 3, "val": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"], "no temporary folder is left behind"
    lines = (root / "train.txt").read_text().splitlines()
    assert lines == [f"JPEGImages/train_{i:05d}.jpg SegmentationClass/train_{i:05d}.png" for i in range(3)]
    with Image.open(root / "SegmentationClass" / "val_00001.png") as png:
        assert png.mode == "P"
    dataset = SegmentationList(root, root / "val.txt")
    assert len(dataset) == 2 and dataset.names == ["val_00000", "val_00001"]
    for index in range(2):
        image, label = synthetic.generate_sample("val", index)
        assert np.array_equal(dataset.load_label(index), label)
        read = dataset.load_image(index)
        assert read.shape == image.shape
        assert np.abs(read.astype(int) - image.astype(int)).mean() < 10  # JPEG, quality 90
    counts = dataset.class_pixel_counts()
    assert counts.shape == (2, 256) and counts[1].sum() == label.size
    assert np.array_equal(counts[1], np.bincount(label.ravel(), minlength=256))


def test_concurrent_writer_that_loses_the_rename_keeps_the_winner(tmp_path):
    winner = synthetic.write_dataset(tmp_path / "v", sizes={"val": 1})
    before = (winner / "val.txt").read_bytes()
    again = synthetic.write_dataset(tmp_path / "v", sizes={"val": 2})
    assert again == winner and (winner / "val.txt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_ensure_reuses_an_existing_dataset(tmp_path, monkeypatch):
    root = synthetic.write_dataset(tmp_path / "v", sizes={"train": 1, "val": 1})
    monkeypatch.setattr(synthetic, "synthetic_root", lambda: root)
    monkeypatch.setattr(synthetic, "write_dataset", lambda *a, **k: pytest.fail("regenerated"))
    assert synthetic.ensure_synthetic_dataset() == root


@pytest.fixture(scope="module")
def val_counts() -> np.ndarray:
    """Pixel counts of the val split, from the generator (labels are stored losslessly)."""
    counts = np.zeros((synthetic.SPLIT_SIZES["val"], 256), dtype=np.int64)
    for index in range(len(counts)):
        counts[index] = np.bincount(synthetic.generate_sample("val", index)[1].ravel(), minlength=256)
    return counts


@pytest.mark.parametrize("benchmark_name", ["synthetic5i", "synthetic10i"])
def test_every_novel_class_has_five_eligible_supports(val_counts, benchmark_name):
    benchmark = get_benchmark(benchmark_name)
    for fold in range(benchmark.num_folds):
        novel = list(benchmark.novel_classes(fold))
        for cls in novel:
            others = [c for c in novel if c != cls]
            eligible = (val_counts[:, cls] >= benchmark.min_support_pixels) & (val_counts[:, others].sum(1) == 0)
            assert eligible.sum() >= 5, (benchmark_name, fold, cls, int(eligible.sum()))


def test_every_class_appears_in_train_and_val(val_counts):
    assert (val_counts[:, 1:21] > 0).sum(0).min() >= 20


def test_voc_palette_matches_known_colours():
    palette = np.array(synthetic.voc_palette()).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # VOC aeroplane
    assert palette[15].tolist() == [192, 128, 128]  # VOC person
    assert palette[255].tolist() == [224, 224, 192]  # VOC void


def test_ensure_removes_only_stale_temporaries(tmp_path, monkeypatch):
    import os

    root = tmp_path / "v9"
    old, fresh = tmp_path / ".v9.tmp-old", tmp_path / ".v9.tmp-fresh"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (0, 0))
    monkeypatch.setattr(synthetic, "synthetic_root", lambda: root)
    monkeypatch.setattr(synthetic, "write_dataset", lambda r: r)
    assert synthetic.ensure_synthetic_dataset(progress=False) == root
    assert not old.exists() and fresh.exists()
