"""Careless and hostile data: images and labels above the pixel limit (a 20000x20000 PNG header: a few bytes that
would decode to 400 MB), a JPEGImages/ symlinked to another disk, and an episode file whose support image holds no
pixel of its class."""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from gfss_bench.data.datasets import SegmentationList, decode_image, ImageTooLarge
from gfss_bench.data.episodes import EpisodeFile
from gfss_bench.data.verify import verify_dataset
from gfss_bench.errors import GFSSError
from gfss_bench.evaluation.runner import execute
from gfss_bench.protocols import get_benchmark
from gfss_bench.results.store import ResultStore
from tests.evaluation.test_runner import CountingLoader
from tests.evaluation.toy import toy_benchmark, toy_spec


def png_header(width: int, height: int) -> bytes:
    """A greyscale PNG that claims `width` x `height` pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture
def toy(tmp_path):
    """(benchmark name, data root, val list) of a 12-image YAML benchmark."""
    name = toy_benchmark(tmp_path / "bench")
    root = tmp_path / "bench" / "data"
    return name, root, SegmentationList(root, root / "val.txt")


def test_huge_label_is_bad_data_naming_the_file(toy, tmp_path):
    name, root, split = toy
    label = split.items[11][1]
    label.write_bytes(png_header(20000, 20000))
    with pytest.raises(GFSSError) as error:
        split.load_label(11)
    message = str(error.value)
    assert str(label) in message and "GFSS_BENCH_MAX_IMAGE_PIXELS" in message and "--skip-bad-images" in message
    assert [i for i, _ in split.find_bad_items()] == [11]
    report = verify_dataset(get_benchmark(name), root, splits=("val",), workers=1)
    [problem] = report.problems
    assert problem.path == str(label) and "GFSS_BENCH_MAX_IMAGE_PIXELS" in problem.message
    with pytest.raises(GFSSError, match="GFSS_BENCH_MAX_IMAGE_PIXELS"):  # a run stops with the file ...
        execute([toy_spec(name)], ResultStore(tmp_path / "r"), segmenter_loader=CountingLoader())
    [result] = execute([toy_spec(name)], ResultStore(tmp_path / "r"), segmenter_loader=CountingLoader(),
                       skip_bad_images=True)  # ... or leaves it out
    [skipped] = result["skipped_images"]
    assert skipped["label"] == str(label) and "pixels" in skipped["reason"]


def test_pixel_limit_applies_to_images_and_can_be_changed(toy, monkeypatch):
    _, root, split = toy
    with pytest.raises(ImageTooLarge, match="20000x20000 = 400,000,000 pixels|too large to decode"):
        decode_image(png_header(20000, 20000))  # an image file in any format PIL can read the header of
    monkeypatch.setenv("GFSS_BENCH_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(GFSSError, match=r"image .*val_000\.jpg.* pixels, above the limit of 1,000"):
        split.load_image(0)  # a JPEG, decoded by OpenCV: checked from its header first
    with pytest.raises(GFSSError, match=r"label .*val_000\.png.* above the limit of 1,000"):
        split.load_label(0)
    monkeypatch.setenv("GFSS_BENCH_MAX_IMAGE_PIXELS", "200000")
    image, label = split.load(0)
    assert image.shape[:2] == label.shape
    monkeypatch.setenv("GFSS_BENCH_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(GFSSError, match="GFSS_BENCH_MAX_IMAGE_PIXELS='lots' is not a positive number"):
        split.load(0)


def test_symlinked_image_folder_inside_the_root_is_accepted(toy, tmp_path):
    _, root, split = toy
    before = split.load_image(3)
    other_disk = tmp_path / "other-disk" / "JPEGImages"
    other_disk.parent.mkdir()
    shutil.move(root / "JPEGImages", other_disk)
    (root / "JPEGImages").symlink_to(other_disk, target_is_directory=True)
    linked = SegmentationList(root, root / "val.txt")  # a common cluster layout: images on another disk
    assert [image.name for image, _ in linked.items] == [image.name for image, _ in split.items]
    assert np.array_equal(linked.load(3)[0], before)
    assert linked.without([0]).items == linked.items[1:]
    for escaping in ("JPEGImages/../../other-disk/JPEGImages/val_000.jpg", "/etc/hostname"):
        (root / "bad.txt").write_text(f"{escaping} SegmentationClass/val_000.png\n")
        with pytest.raises(GFSSError, match="points outside the data root"):
            SegmentationList(root, root / "bad.txt")


def _episode_document(bench, fold, supports):
    names = [bench.class_names[c - 1] for c in bench.novel_classes(fold)]
    return [{"benchmark": bench.name, "fold": fold, "shot": 1, "seed": 0, "episodes": "diam",
             "runs": [{"run": 0, "supports": {n: [s] for n, s in zip(names, supports)}, "num_queries": 1}]}]


def test_episode_file_support_without_its_class_is_refused(tmp_path):
    bench = get_benchmark("synthetic5i")
    novel = bench.novel_classes(0)
    names = [f"img{i}" for i in range(len(novel) + 1)]
    counts = np.zeros((len(names), 256), dtype=np.int64)
    for i, cls in enumerate(novel):
        counts[i, cls] = 500
    counts[-1, bench.base_classes(0)[0]] = 500  # holds no novel class at all
    settings = bench.evaluation_settings()
    path = tmp_path / "episodes.json"
    path.write_text(json.dumps(_episode_document(bench, 0, names[:len(novel)])))
    [episode] = EpisodeFile(path).make_episodes(bench, 0, 1, 1, 0, counts, settings, names, names)
    assert episode.supports == tuple((i,) for i in range(len(novel)))
    path.write_text(json.dumps(_episode_document(bench, 0, names[:len(novel) - 1] + ["img5"])))
    with pytest.raises(GFSSError) as error:
        EpisodeFile(path).make_episodes(bench, 0, 1, 1, 0, counts, settings, names, names)
    message = str(error.value)
    assert str(path) in message and "'img5'" in message and "holds no pixel of that class" in message
    last = bench.class_names[novel[-1] - 1]
    assert f"class {last} (id {novel[-1]}" in message


@pytest.mark.parametrize("content, reason", [(b"[" * 100000, "nested deeper"), (b"\xff\xfe[]", "not UTF-8"),
                                             (b"[1" + b"0" * 5000 + b"]", "more than 4300 digits"),
                                             (b'["' + b"x" * 5000 + b'"]', "must be a list of")])
def test_bad_episode_files_are_one_short_line(tmp_path, content, reason):
    path = tmp_path / "episodes.json"
    path.write_bytes(content)
    with pytest.raises(GFSSError) as error:
        EpisodeFile(path)
    message = str(error.value)
    assert message.startswith(f"episode file {path}") and reason in message
    assert "\n" not in message and len(message) < 600
