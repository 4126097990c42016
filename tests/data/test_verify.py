"""`gfss-bench data verify` on a small PASCAL data root: clean, then with one problem of each kind."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gfss_bench.data.prepare import prepare_pascal
from gfss_bench.data.verify import verify_dataset
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark
from tests.data.test_prepare import VOC_STEMS, VOC_VAL, make_voc_root, write_label

TRAIN_STEMS = VOC_STEMS[:3]  # make_voc_root gives image i the class 1 + i


@pytest.fixture
def voc_root(tmp_path):
    root = make_voc_root(tmp_path / "VOC2012")
    prepare_pascal(root)
    return root


def damage(root):
    """A label of the wrong size, a label with class 21 (not a PASCAL class) and a missing label."""
    labels = root / "SegmentationClassAug"
    write_label(labels / f"{TRAIN_STEMS[0]}.png", np.array(Image.open(labels / f"{TRAIN_STEMS[0]}.png"))[:, :20])
    label = np.array(Image.open(labels / f"{TRAIN_STEMS[1]}.png"))
    label[8, 8] = 21
    write_label(labels / f"{TRAIN_STEMS[1]}.png", label)
    (labels / f"{VOC_VAL[0]}.png").unlink()
    return [
        ("train", str(labels / f"{TRAIN_STEMS[0]}.png"),
         f"label is 20x16 but its image {root / 'JPEGImages' / f'{TRAIN_STEMS[0]}.jpg'} is 24x16"),
        ("train", str(labels / f"{TRAIN_STEMS[1]}.png"),
         "label holds class id(s) 21, outside 0..20 and 255 (wrong benchmark or broken labels)"),
        ("val", str(labels / f"{VOC_VAL[0]}.png"), "label does not exist"),
    ]


def test_clean_root_counts_images_per_class(voc_root):
    report = verify_dataset(get_benchmark("pascal5i"), voc_root, workers=2)
    assert report.ok and report.problems == []
    assert {split: counts.images for split, counts in report.splits.items()} == {"train": 3, "val": 2}
    assert report.splits["train"].class_images == [1, 1, 1] + [0] * 17
    assert report.splits["val"].class_images == [0, 0, 0, 1, 1] + [0] * 15


def test_every_problem_is_found_with_its_path(voc_root):
    expected = damage(voc_root)
    report = verify_dataset(get_benchmark("pascal5i"), voc_root, workers=1)
    assert not report.ok
    assert [(p.split, p.path, p.message) for p in report.problems] == expected
    assert report.splits["train"].class_images[:3] == [1, 1, 1]  # the mismatched label still counts its classes


def test_the_benchmark_decides_which_class_ids_are_valid(voc_root):
    damage(voc_root)
    report = verify_dataset(get_benchmark("coco20i"), voc_root, workers=1)  # 80 classes: 21 is valid
    assert [p.message for p in report.problems] == [
        f"label is 20x16 but its image {voc_root / 'JPEGImages' / f'{TRAIN_STEMS[0]}.jpg'} is 24x16",
        "label does not exist"]
    assert report.splits["train"].class_images[20] == 1


def test_broken_images_and_list_files_are_problems_not_crashes(voc_root):
    image = voc_root / "JPEGImages" / f"{VOC_VAL[1]}.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated
    (voc_root / "train.txt").write_text("../escape.jpg SegmentationClassAug/x.png\n")
    report = verify_dataset(get_benchmark("pascal5i"), voc_root, workers=1)
    assert [(p.split, p.path) for p in report.problems] == [("train", str(voc_root / "train.txt")),
                                                            ("val", str(image))]
    assert "points outside the data root" in report.problems[0].message
    assert "image cannot be read" in report.problems[1].message
    (voc_root / "train.txt").unlink()
    report = verify_dataset(get_benchmark("pascal5i"), voc_root, splits=("train",), workers=1)
    assert [p.message for p in report.problems] == [
        f"missing; run `gfss-bench data prepare pascal --root {voc_root}`"]


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(GFSSError, match="is not a folder"):
        verify_dataset(get_benchmark("pascal5i"), tmp_path / "nowhere")


def test_cli_verify_clean_exits_0_with_a_class_table(voc_root):
    result = CliRunner().invoke(cli, ["data", "verify", "pascal5i", "--root", str(voc_root)])
    assert result.exit_code == 0, result.output
    assert "airplane" in result.output and "val (2 images)" in result.output
    assert "OK: train 3 images, val 2 images, no problems" in result.output


def test_cli_verify_lists_problems_and_exits_1(voc_root):
    expected = damage(voc_root)
    result = CliRunner().invoke(cli, ["data", "verify", "pascal5i", "--root", str(voc_root), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problem_count"] == 3
    assert [(p["split"], p["path"], p["problem"]) for p in report["problems"]] == expected
    assert report["splits"]["train"]["class_images"]["bicycle"] == 1
    result = CliRunner().invoke(cli, ["data", "verify", "pascal5i", "--root", str(voc_root), "--show", "1"])
    assert result.exit_code == 1
    assert expected[0][1] in result.stdout and expected[2][1] not in result.stdout
    assert "3 problem(s) found; the first 1 are listed above" in result.output
