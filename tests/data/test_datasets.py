"""SegmentationList / open_split: list parsing, path escaping, errors, pixel counts and their cache."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gfss_bench.data.datasets import SegmentationList, decode_image, jpeg_is_complete, open_split
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark


def _write_item(root: Path, name: str, label: np.ndarray, mode: str = "P") -> str:
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    image = np.zeros(label.shape + (3,), dtype=np.uint8)
    image[..., 0] = 200
    Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
    if mode == "P":
        png = Image.frombytes("P", label.shape[::-1], label.tobytes())
        png.putpalette([0, 0, 0] * 256)
    elif mode == "L":
        png = Image.fromarray(label)
    else:
        png = Image.fromarray(np.stack([label] * 3, -1))
    png.save(root / "SegmentationClass" / f"{name}.png")
    return f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n"


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "voc"
    root.mkdir()
    label_a = np.zeros((6, 8), dtype=np.uint8)
    label_a[1:3, 2:5] = 7
    label_a[0, :] = 255
    label_b = np.full((5, 4), 3, dtype=np.uint8)
    lines = _write_item(root, "a", label_a) + _write_item(root, "b", label_b, mode="L")
    (root / "train.txt").write_text(lines)
    return root


def test_reads_images_labels_and_names(voc_root):
    dataset = SegmentationList(voc_root, voc_root / "train.txt")
    assert len(dataset) == 2 and dataset.names == ["a", "b"]
    image = dataset.load_image(0)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8 and abs(int(image[..., 0].mean()) - 200) < 5
    label = dataset.load_label(0)
    assert label.dtype == np.uint8 and label[1, 2] == 7 and label[0, 0] == 255 and (label == 7).sum() == 6
    assert dataset.load_label(1).tolist() == [[3] * 4] * 5  # greyscale PNGs work too


def test_class_pixel_counts_are_exact_and_cached(voc_root):
    dataset = SegmentationList(voc_root, voc_root / "train.txt")
    counts = dataset.class_pixel_counts()
    assert counts.dtype == np.int64 and counts.shape == (2, 256)
    assert counts[0, 7] == 6 and counts[0, 255] == 8 and counts[0, 0] == 48 - 14 and counts[1, 3] == 20
    assert dataset.present_classes(0) == [7] and dataset.present_classes(1) == [3]
    # Cached: a second list object with the same content reads the cache even when the labels changed.
    (voc_root / "SegmentationClass" / "b.png").unlink()
    assert np.array_equal(SegmentationList(voc_root, voc_root / "train.txt").class_pixel_counts(), counts)
    # A different list file content is a different cache entry.
    (voc_root / "one.txt").write_text((voc_root / "train.txt").read_text().splitlines()[0] + "\n")
    assert SegmentationList(voc_root, voc_root / "one.txt").class_pixel_counts().shape == (1, 256)


@pytest.mark.parametrize("bad", ["../outside.jpg SegmentationClass/a.png",
                                 "JPEGImages/a.jpg ../../etc/passwd",
                                 "/etc/hostname SegmentationClass/a.png",
                                 "JPEGImages/../../voc2/a.jpg SegmentationClass/a.png"])
def test_paths_escaping_the_root_are_rejected(voc_root, bad):
    list_file = voc_root / "bad.txt"
    list_file.write_text("JPEGImages/a.jpg SegmentationClass/a.png\n" + bad + "\n")
    with pytest.raises(GFSSError, match=r"bad\.txt, line 2: .*outside the data root"):
        SegmentationList(voc_root, list_file)


def test_symlinked_folder_inside_the_root_is_taken_as_laid_out(voc_root, tmp_path):
    """A folder of the root may be a symlink to another disk (a common cluster layout); lines still may not leave the
    root by themselves (`..`, absolute paths: above)."""
    (tmp_path / "elsewhere").mkdir()
    (voc_root / "link").symlink_to(tmp_path / "elsewhere")
    list_file = voc_root / "linked.txt"
    list_file.write_text("link/a.jpg SegmentationClass/a.png\n")
    [(image, label)] = SegmentationList(voc_root, list_file).items
    assert image == voc_root.resolve() / "link" / "a.jpg" and label.parent.name == "SegmentationClass"
    list_file.write_text("link/../../elsewhere/a.jpg SegmentationClass/a.png\n")
    with pytest.raises(GFSSError, match="outside the data root"):
        SegmentationList(voc_root, list_file)


def test_empty_and_malformed_list_files(voc_root):
    (voc_root / "empty.txt").write_text("\n\n")
    with pytest.raises(GFSSError, match="empty.txt lists no images"):
        SegmentationList(voc_root, voc_root / "empty.txt")
    (voc_root / "three.txt").write_text("a b c\n")
    with pytest.raises(GFSSError, match="three.txt, line 1"):
        SegmentationList(voc_root, voc_root / "three.txt")
    with pytest.raises(GFSSError, match="missing.txt"):
        SegmentationList(voc_root, voc_root / "missing.txt")


def test_missing_unreadable_and_rgb_files_name_the_file(voc_root):
    (voc_root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    (voc_root / "SegmentationClass" / "b.png").unlink()
    dataset = SegmentationList(voc_root, voc_root / "train.txt")
    with pytest.raises(GFSSError, match=r"a\.jpg.*cannot be read"):
        dataset.load_image(0)
    with pytest.raises(GFSSError, match=r"b\.png.*does not exist"):
        dataset.load_label(1)
    lines = _write_item(voc_root, "rgb", np.ones((4, 4), np.uint8), mode="RGB")
    (voc_root / "rgb.txt").write_text(lines)
    with pytest.raises(GFSSError, match=r"rgb\.png has image mode RGB"):
        SegmentationList(voc_root, voc_root / "rgb.txt").load_label(0)


def test_open_split_pascal_needs_a_data_root(voc_root):
    benchmark = get_benchmark("pascal5i")
    with pytest.raises(GFSSError, match="--data-root"):
        open_split(benchmark, "train")
    assert open_split(benchmark, "train", voc_root).names == ["a", "b"]
    with pytest.raises(GFSSError, match="val.txt"):
        open_split(benchmark, "val", voc_root)
    with pytest.raises(GFSSError, match="unknown split"):
        open_split(benchmark, "test", voc_root)


def test_open_split_synthetic_uses_the_generated_dataset(monkeypatch, tmp_path):
    from gfss_bench.data import synthetic

    root = synthetic.write_dataset(tmp_path / "v", sizes={"train": 2, "val": 1})
    monkeypatch.setattr(synthetic, "ensure_synthetic_dataset", lambda progress=True: root)
    split = open_split(get_benchmark("synthetic5i"), "val", data_root="/ignored")
    assert split.root == root and split.names == ["val_00000"]


def _photo_jpeg(**options) -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(128, 60, (37, 53, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_images_are_decoded_as_opencv_imread_then_bgr_to_rgb(voc_root, tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation "rotate 90": OpenCV applies it, PIL does not
    path.write_bytes(_photo_jpeg(exif=exif.tobytes()))
    (voc_root / "one.txt").write_text(f"{path.relative_to(tmp_path)} voc/SegmentationClass/a.png\n")
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert expected.shape == (53, 37, 3)
    assert np.array_equal(SegmentationList(tmp_path, voc_root / "one.txt").load_image(0), expected)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"quality": 100}])
def test_truncated_jpegs_are_refused_and_complete_ones_kept(options):
    data = _photo_jpeg(**options)
    assert jpeg_is_complete(data) and decode_image(data) is not None
    assert decode_image(data + b"trailing bytes\0") is not None  # data after the end marker is ignored
    for keep in (0.2, 0.5, 0.9, len(data) - 2, len(data) - 1):
        cut = data[:int(keep * len(data)) if keep < 1 else keep]
        assert not jpeg_is_complete(cut) and decode_image(cut) is None
    assert decode_image(b"") is None and decode_image(b"not an image") is None
