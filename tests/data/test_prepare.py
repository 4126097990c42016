"""`gfss-bench data prepare` on small datasets in the real PASCAL VOC and COCO 2014 layouts.

COCO labels are checked against pycocotools' own `COCO.annToMask` (an independent decoder of every
annotation) and at hand-picked pixels; the renumbering against the 80 real COCO category ids.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from gfss_bench.data.datasets import open_split
from gfss_bench.data.prepare import coco_class_ids, prepare_coco, prepare_pascal
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark
from gfss_bench.protocols.catalog import COCO_CLASSES

# The 80 COCO 2014 category ids (1..90 with gaps), in order: class id i+1 is COCO_CATEGORY_IDS[i].
COCO_CATEGORY_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45))
                     + list(range(46, 66)) + [67, 70] + list(range(72, 83)) + list(range(84, 91)))
PERSON, BICYCLE, STOP_SIGN, DOG, DINING_TABLE, TOOTHBRUSH = 1, 2, 13, 18, 67, 90  # COCO category ids


def write_jpeg(path, width, height, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_label(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(label, dtype=np.uint8)).save(path)


# PASCAL -----------------------------------------------------------------------------------------------

VOC_STEMS = ("2007_000032", "2007_000039", "2008_000002", "2009_000001", "2010_000005")
VOC_VAL = ("2009_000001", "2010_000005")


def make_voc_root(root, label_dir="SegmentationClassAug"):
    """VOCdevkit/VOC2012 in miniature: JPEGs, labels (class 1 + i in image i, void border) and val.txt."""
    for i, stem in enumerate(VOC_STEMS):
        write_jpeg(root / "JPEGImages" / f"{stem}.jpg", 24, 16, seed=i)
        label = np.zeros((16, 24), np.uint8)
        label[4:12, 6:18] = 1 + i
        label[0] = 255
        write_label(root / label_dir / f"{stem}.png", label)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    return root


def voc_lines(stems, label_dir="SegmentationClassAug"):
    return "".join(f"JPEGImages/{stem}.jpg {label_dir}/{stem}.png\n" for stem in stems)


def test_pascal_lists_are_aug_train_minus_val_and_official_val(tmp_path):
    root = make_voc_root(tmp_path / "VOC2012")
    summary = prepare_pascal(root)
    assert (root / "val.txt").read_text() == voc_lines(VOC_VAL)
    assert (root / "train.txt").read_text() == voc_lines(VOC_STEMS[:3])
    assert (summary.train_images, summary.val_images, summary.notes) == (3, 2, [])
    val = open_split(get_benchmark("pascal5i"), "val", root)
    assert val.names == list(VOC_VAL)
    image, label = val.load(0)
    assert image.shape[:2] == label.shape and set(np.unique(label)) == {0, 4, 255}


def test_pascal_aug_train_list_is_used_when_present(tmp_path):
    root = make_voc_root(tmp_path)
    aug_list = root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    aug_list.parent.mkdir(parents=True)
    aug_list.write_text("".join(f"/JPEGImages/{stem}.jpg /SegmentationClassAug/{stem}.png\n"  # DeepLab's format
                                for stem in (VOC_STEMS[0], VOC_STEMS[2], VOC_VAL[0])))
    prepare_pascal(root)
    assert (root / "train.txt").read_text() == voc_lines((VOC_STEMS[0], VOC_STEMS[2]))


def test_pascal_without_sbd_uses_segmentation_class_and_says_so(tmp_path):
    root = make_voc_root(tmp_path, label_dir="SegmentationClass")
    summary = prepare_pascal(root)
    assert (root / "train.txt").read_text() == voc_lines(VOC_STEMS[:3], "SegmentationClass")
    assert len(summary.notes) == 1 and "SegmentationClassAug" in summary.notes[0]


def test_pascal_user_lists_are_copied_verbatim(tmp_path):
    root = make_voc_root(tmp_path / "VOC2012")
    train_list, val_list = tmp_path / "my_train.txt", tmp_path / "my_val.txt"
    train_list.write_bytes(voc_lines(VOC_STEMS[1:3]).replace("\n", "\r\n").encode())  # CRLF: kept as is
    val_list.write_text(voc_lines(VOC_VAL[:1]))
    summary = prepare_pascal(root, train_list=train_list, val_list=val_list)
    assert (root / "train.txt").read_bytes() == train_list.read_bytes()
    assert (root / "val.txt").read_bytes() == val_list.read_bytes()
    assert (summary.train_images, summary.val_images) == (2, 1)


def test_pascal_only_val_list_given_train_leaves_out_its_images(tmp_path):
    root = make_voc_root(tmp_path / "VOC2012")
    val_list = tmp_path / "my_val.txt"
    val_list.write_text(voc_lines(VOC_STEMS[:1]))
    prepare_pascal(root, val_list=val_list)
    assert (root / "train.txt").read_text() == voc_lines(VOC_STEMS[1:])


@pytest.mark.parametrize("line,expected", [
    ("../outside.jpg SegmentationClassAug/2007_000032.png", "points outside the data root"),
    ("/etc/hostname SegmentationClassAug/2007_000032.png", "points outside the data root"),
    ("JPEGImages/2007_000032.jpg SegmentationClassAug/nope.png", "SegmentationClassAug/nope.png"),
    ("JPEGImages/2007_000032.jpg", "expected 'image_path label_path'"),
])
def test_pascal_bad_user_list_is_refused_and_nothing_written(tmp_path, line, expected):
    root = make_voc_root(tmp_path / "VOC2012")
    (tmp_path / "outside.jpg").write_bytes(b"not inside the root")
    train_list = tmp_path / "bad.txt"
    train_list.write_text(voc_lines(VOC_STEMS[:1]) + line + "\n")
    with pytest.raises(GFSSError, match=expected):
        prepare_pascal(root, train_list=train_list)
    assert not (root / "train.txt").exists() and not (root / "val.txt").exists()


def test_pascal_missing_folders_and_files_are_named(tmp_path):
    with pytest.raises(GFSSError, match=r"no JPEGImages/ and no SegmentationClassAug \(or SegmentationClass\)/"):
        prepare_pascal(tmp_path)
    root = make_voc_root(tmp_path / "VOC2012")
    (root / "JPEGImages" / f"{VOC_STEMS[1]}.jpg").unlink()
    with pytest.raises(GFSSError, match=rf"1 file\(s\) listed by every label in SegmentationClassAug/ minus val "
                                        rf"do not exist in .*: JPEGImages/{VOC_STEMS[1]}.jpg"):
        prepare_pascal(root)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(GFSSError, match=r"ImageSets/Segmentation/val.txt does not exist.*--val-list"):
        prepare_pascal(root)


def test_cli_prepare_pascal(tmp_path):
    root = make_voc_root(tmp_path / "VOC2012")
    result = CliRunner().invoke(cli, ["data", "prepare", "pascal", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output and "2 images" in result.output
    assert (root / "train.txt").read_text() == voc_lines(VOC_STEMS[:3])


# COCO -------------------------------------------------------------------------------------------------


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + counts if flat[0] else counts}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def box(height, width, rows, cols):
    mask = np.zeros((height, width), np.uint8)
    mask[rows, cols] = 1
    return mask


# val image 1 (40x30): a small toothbrush listed before the two-part person it lies on, a stop sign as
# uncompressed RLE, a crowd region (uncompressed RLE, as COCO stores them) overlapping the stop sign, a
# dining table as compressed RLE. val image 2: no annotation. Two train images with one polygon each.
COCO_IMAGES = {
    "val2014": [(1, "COCO_val2014_000000000001.jpg", 40, 30), (2, "COCO_val2014_000000000002.jpg", 32, 24)],
    "train2014": [(11, "COCO_train2014_000000000011.jpg", 36, 28), (12, "COCO_train2014_000000000012.jpg", 36, 28)],
}
COCO_ANNOTATIONS = {
    "val2014": [
        (101, 1, TOOTHBRUSH, 0, [[8, 8, 14, 8, 14, 14, 8, 14]]),
        (102, 1, PERSON, 0, [[2, 2, 20, 2, 20, 20, 2, 20], [30, 2, 38, 2, 38, 10, 30, 10]]),
        (103, 1, STOP_SIGN, 0, uncompressed_rle(box(30, 40, slice(22, 29), slice(2, 13)))),
        (104, 1, PERSON, 1, uncompressed_rle(box(30, 40, slice(20, 30), slice(8, 21)))),
        (105, 1, DINING_TABLE, 0, compressed_rle(box(30, 40, slice(12, 19), slice(24, 40)))),
    ],
    "train2014": [
        (201, 11, BICYCLE, 0, [[3, 3, 30, 5, 20, 25]]),
        (202, 12, DOG, 0, [[0, 0, 36, 0, 36, 28, 0, 28]]),
    ],
}


def make_coco_root(root):
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    for split in ("train2014", "val2014"):
        images = [{"id": image_id, "file_name": name, "width": width, "height": height}
                  for image_id, name, width, height in COCO_IMAGES[split]]
        for seed, image in enumerate(images):
            write_jpeg(root / split / image["file_name"], image["width"], image["height"], seed)
        annotations = [{"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
                        "segmentation": segmentation, "area": 0, "bbox": [0, 0, 1, 1]}
                       for ann_id, image_id, category, crowd, segmentation in COCO_ANNOTATIONS[split]]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return root


def label_path(root, split, file_name):
    return root / "SegmentationClass" / split / file_name.replace(".jpg", ".png")


def read_label(path):
    with Image.open(path) as label:
        assert label.mode == "L"
        return np.array(label)


def reference_label(coco, image_id):
    """The documented rule, on pycocotools' own masks: crowd -> 255, then non-crowd largest first."""
    info = coco.imgs[image_id]
    label = np.zeros((info["height"], info["width"]), np.uint8)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    for annotation in annotations:
        if annotation["iscrowd"]:
            label[coco.annToMask(annotation) == 1] = 255
    objects = [a for a in annotations if not a["iscrowd"]]
    for annotation in sorted(objects, key=lambda a: -int(coco.annToMask(a).sum())):
        label[coco.annToMask(annotation) == 1] = COCO_CATEGORY_IDS.index(annotation["category_id"]) + 1
    return label


@pytest.fixture
def coco_root(tmp_path):
    return make_coco_root(tmp_path / "coco")


def test_coco_labels_match_pycocotools_masks(coco_root):
    summaries = prepare_coco(coco_root, workers=1)
    assert {split: (s.images, s.built, s.kept) for split, s in summaries.items()} == {
        "train2014": (2, 2, 0), "val2014": (2, 2, 0)}
    for split in ("train2014", "val2014"):
        coco = COCO(str(coco_root / "annotations" / f"instances_{split}.json"))
        for image_id, name, width, height in COCO_IMAGES[split]:
            label = read_label(label_path(coco_root, split, name))
            assert label.shape == (height, width)
            np.testing.assert_array_equal(label, reference_label(coco, image_id))
    label = read_label(label_path(coco_root, "val2014", COCO_IMAGES["val2014"][0][1]))
    assert label[11, 11] == 80  # the toothbrush, drawn after the larger person it lies on
    assert label[5, 5] == 1 and label[5, 34] == 1  # both polygons of the person
    assert label[25, 5] == 12  # stop sign (uncompressed RLE)
    assert label[25, 10] == 12  # stop sign over the crowd region
    assert label[25, 18] == 255  # crowd only
    assert label[15, 30] == 61  # dining table (compressed RLE)
    assert set(np.unique(label)) == {0, 1, 12, 61, 80, 255}
    assert not read_label(label_path(coco_root, "val2014", COCO_IMAGES["val2014"][1][1])).any()


def test_coco_renumbering_is_sorted_category_id_order():
    categories = [{"id": cid, "name": name} for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    class_ids = coco_class_ids({"categories": categories[::-1]}, "instances.json")  # file order must not matter
    assert class_ids == {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS, start=1)}
    assert (class_ids[PERSON], class_ids[STOP_SIGN], class_ids[DOG], class_ids[DINING_TABLE],
            class_ids[TOOTHBRUSH]) == (1, 12, 17, 61, 80)
    with pytest.raises(GFSSError, match="not COCO's 80"):
        coco_class_ids({"categories": categories[:79]}, "instances.json")


def test_coco_resumes_rebuilding_only_missing_labels(coco_root):
    prepare_coco(coco_root, workers=1)
    labels = sorted((coco_root / "SegmentationClass").rglob("*.png"))
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in labels}
    deleted = label_path(coco_root, "val2014", COCO_IMAGES["val2014"][0][1])
    deleted.unlink()
    stray = deleted.parent / f".{deleted.name}.x1y2z3.tmp"  # what a killed atomic write leaves behind
    stray.write_bytes(b"half a png")
    summaries = prepare_coco(coco_root, workers=1)
    assert (summaries["val2014"].built, summaries["val2014"].kept, summaries["train2014"].built) == (1, 1, 0)
    assert not stray.exists()
    assert sorted(path.name for path in (coco_root / "SegmentationClass").rglob("*")
                  if path.is_file()) == sorted(path.name for path in labels)
    for path in labels:
        assert path.read_bytes() == before[path][1]
        assert (path.stat().st_mtime_ns == before[path][0]) == (path != deleted)


def test_coco_size_mismatch_is_reported_and_no_lists_written(coco_root):
    write_jpeg(coco_root / "train2014" / COCO_IMAGES["train2014"][1][1], 20, 20)
    with pytest.raises(GFSSError, match=r"1 image\(s\) got no label: .*COCO_train2014_000000000012.jpg is 20x20 "
                                        r"but the annotations say 36x28"):
        prepare_coco(coco_root, workers=1)
    assert not (coco_root / "train.txt").exists() and not (coco_root / "val.txt").exists()
    assert label_path(coco_root, "val2014", COCO_IMAGES["val2014"][0][1]).exists()  # the good ones are kept


def test_coco_missing_folders_are_named(tmp_path):
    (tmp_path / "val2014").mkdir()
    with pytest.raises(GFSSError) as error:
        prepare_coco(tmp_path)
    message = str(error.value)
    assert "train2014/, annotations/instances_train2014.json, annotations/instances_val2014.json" in message
    assert "val2014/," not in message and "cocodataset.org" in message


def test_cli_prepare_coco_in_parallel_gives_an_openable_data_root(coco_root):
    result = CliRunner().invoke(cli, ["data", "prepare", "coco", "--root", str(coco_root), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "val2014: 2 images, 2 labels built, 0 kept" in result.output
    assert (coco_root / "val.txt").read_text() == (
        "val2014/COCO_val2014_000000000001.jpg SegmentationClass/val2014/COCO_val2014_000000000001.png\n"
        "val2014/COCO_val2014_000000000002.jpg SegmentationClass/val2014/COCO_val2014_000000000002.png\n")
    train = open_split(get_benchmark("coco20i"), "train", coco_root)
    image, label = train.load(1)
    assert image.shape == (28, 36, 3) and set(np.unique(label)) == {17}  # the dog covers the whole image


def test_cli_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gfss_bench", "data", "prepare", "coco", "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no train2014/" in lines[0], result.stderr
