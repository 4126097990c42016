"""`gfss-bench data prepare`: turn the official PASCAL VOC 2012 / COCO 2014 downloads into a data root.

A data root holds `train.txt` and `val.txt` (one `image_rel label_rel` per line, see `datasets.py`).
PASCAL ships its labels as PNGs, so only the lists are written. COCO ships instance annotations, so
one semantic label PNG per image is built first (classes 1..80 in sorted-COCO-id order, 0 background,
255 ignore). Every file is written atomically; rerunning resumes where an interrupted run stopped.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from gfss_bench.data.datasets import SegmentationList
from gfss_bench.errors import GFSSError
from gfss_bench.paths import atomic_write_bytes, atomic_write_text
from gfss_bench.progress import progress_bar
from gfss_bench.protocols.catalog import COCO_CLASSES

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
SHOWN_PROBLEMS = 5  # files named in one error message; the message also gives the total

PASCAL_LABEL_DIRS = ("SegmentationClassAug", "SegmentationClass")  # SBD-augmented labels preferred
PASCAL_VAL_LIST = "ImageSets/Segmentation/val.txt"
# Train lists of the augmented set as DeepLab and mmsegmentation ship them (stems or paths per line).
PASCAL_AUG_TRAIN_LISTS = ("ImageSets/SegmentationAug/train_aug.txt", "ImageSets/Segmentation/aug.txt")

COCO_SPLITS = ("train2014", "val2014")
COCO_LABEL_DIR = "SegmentationClass"
COCO_DOWNLOAD = ("download train2014.zip, val2014.zip and annotations_trainval2014.zip from "
                 "https://cocodataset.org/#download and unzip them into")

Log = Callable[[str], None]


def parallel_map(function: Callable, tasks: Sequence, workers: Optional[int], description: str) -> list:
    """`function` over `tasks` in order with a progress bar, in `workers` processes (in this one when 1)."""
    workers = min(DEFAULT_WORKERS if workers is None else workers, max(1, len(tasks)))
    chunksize = max(1, min(64, len(tasks) // (4 * workers)))
    with progress_bar() as bar, (multiprocessing.Pool(workers) if workers > 1 else nullcontext()) as pool:
        bar_task = bar.add_task(description, total=len(tasks))
        results = []
        for result in (pool.imap(function, tasks, chunksize) if pool else map(function, tasks)):
            results.append(result)
            bar.advance(bar_task)
        return results


def _problem_list(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return f"{shown}{more}"


def _data_root(root: Path | str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GFSSError(f"--root {root} is not a folder; pass the folder that holds the unpacked dataset")
    return root


# PASCAL VOC 2012 (+ SBD) ------------------------------------------------------------------------------


@dataclass
class PascalSummary:
    train_images: int
    val_images: int
    train_source: str  # where train.txt came from, in words
    notes: list[str] = field(default_factory=list)


def prepare_pascal(root: Path | str, train_list: Optional[Path | str] = None,
                   val_list: Optional[Path | str] = None) -> PascalSummary:
    """Write `root/train.txt` and `root/val.txt` for a VOCdevkit/VOC2012 folder.

    val is VOC 2012's segmentation val set, train the augmented (SBD) train set minus val. A user's
    own list files (e.g. PFENet's/DIaM's lists/pascal/*.txt) are validated and copied verbatim instead.
    """
    root = _data_root(root)
    missing = [name for name in ("JPEGImages",) if not (root / name).is_dir()]
    label_dir = next((name for name in PASCAL_LABEL_DIRS if (root / name).is_dir()), None)
    if label_dir is None:
        missing.append("SegmentationClassAug (or SegmentationClass)")
    if missing:
        raise GFSSError(
            f"{root} has no {' and no '.join(f'{name}/' for name in missing)}; pass the VOCdevkit/VOC2012 folder "
            "of VOCtrainval_11-May-2012.tar with SBD's SegmentationClassAug/ unpacked into it")
    notes = []
    if val_list is not None:
        val_text, val_items = _checked_user_list(root, val_list, "--val-list")
        val_stems = {image.stem for image, _ in val_items}
    else:
        val_stems = set(_stems(_required_file(root, PASCAL_VAL_LIST, "--val-list")))
        val_text = _pascal_list(root, sorted(val_stems), label_dir, PASCAL_VAL_LIST)
    if train_list is not None:
        train_text, _ = _checked_user_list(root, train_list, "--train-list")
        train_source = f"copied from {train_list}"
    else:
        aug_list = next((root / name for name in PASCAL_AUG_TRAIN_LISTS if (root / name).is_file()), None)
        if aug_list is not None:
            candidates, train_source = _stems(aug_list), f"{aug_list.relative_to(root)} minus val"
        else:
            candidates = [path.stem for path in (root / label_dir).glob("*.png")]
            train_source = f"every label in {label_dir}/ minus val"
            if label_dir == "SegmentationClass":
                notes.append("SegmentationClassAug/ (SBD) not found: train.txt holds only the VOC 2012 train "
                             "images, not the 10582-image augmented set that papers train on")
        train_stems = sorted(set(candidates) - val_stems)
        if not train_stems:
            raise GFSSError(f"no train images left: {train_source} is empty; unpack SBD's SegmentationClassAug/ "
                            f"into {root} or pass --train-list")
        train_text = _pascal_list(root, train_stems, label_dir, train_source)
    atomic_write_bytes(root / "train.txt", train_text)
    atomic_write_bytes(root / "val.txt", val_text)
    return PascalSummary(_count_lines(train_text), _count_lines(val_text), train_source, notes)


def _count_lines(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def _required_file(root: Path, relative: str, option: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise GFSSError(f"{path} does not exist; it comes with VOCtrainval_11-May-2012.tar, or pass {option}")
    return path


def _stems(list_file: Path) -> list[str]:
    """Image stems of a VOC-style list: one stem, or `/JPEGImages/x.jpg /SegmentationClassAug/x.png`, per line."""
    return [Path(line.split()[0]).stem for line in list_file.read_text().splitlines() if line.strip()]


def _pascal_list(root: Path, stems: Sequence[str], label_dir: str, source: str) -> bytes:
    """The list `JPEGImages/x.jpg <label_dir>/x.png` per stem; every file must exist."""
    lines = [(f"JPEGImages/{stem}.jpg", f"{label_dir}/{stem}.png") for stem in stems]
    missing = [rel for line in lines for rel in line if not (root / rel).is_file()]
    if missing:
        raise GFSSError(f"{len(missing)} file(s) listed by {source} do not exist in {root}: {_problem_list(missing)}; "
                        "unpack the complete dataset there or pass your own --train-list/--val-list")
    return "".join(f"{image} {label}\n" for image, label in lines).encode()


def _checked_user_list(root: Path, list_file: Path | str, option: str) -> tuple[bytes, list[tuple[Path, Path]]]:
    """A user's list file, verbatim, and its items, once its paths are known to stay inside `root` and exist."""
    if not Path(list_file).is_file():
        raise GFSSError(f"{option} {list_file} is not a file")
    items = SegmentationList(root, list_file).items  # checks the format and that paths stay inside root
    missing = [str(path) for item in items for path in item if not path.is_file()]
    if missing:
        raise GFSSError(f"{option} {list_file} lists {len(missing)} file(s) that do not exist: "
                        f"{_problem_list(missing)}; its paths must be relative to --root {root}")
    return Path(list_file).read_bytes(), items


# COCO 2014 --------------------------------------------------------------------------------------------


@dataclass
class CocoSplitSummary:
    images: int
    built: int  # labels written by this run
    kept: int  # labels already present (an earlier, interrupted run)


def prepare_coco(root: Path | str, workers: Optional[int] = None, log: Log = lambda message: None
                 ) -> dict[str, CocoSplitSummary]:
    """Build `SegmentationClass/<split>/<stem>.png` for every COCO 2014 image, then `train.txt`/`val.txt`.

    Labels already present are kept (resume). The lists are written only when every image got its
    label, so a data root with lists is complete.
    """
    root = _data_root(root)
    required = [f"{split}/" for split in COCO_SPLITS] + [f"annotations/instances_{split}.json" for split in COCO_SPLITS]
    missing = [name for name in required if not (root / name).exists()]
    if missing:
        raise GFSSError(f"{root} has no {', '.join(missing)}; {COCO_DOWNLOAD} {root}")
    summaries, lists, problems = {}, {}, []
    for split in COCO_SPLITS:
        annotation_file = root / "annotations" / f"instances_{split}.json"
        log(f"reading {annotation_file}")
        try:
            tasks = _coco_label_tasks(root, split, _read_json(annotation_file), annotation_file)
        except (KeyError, TypeError) as error:
            raise GFSSError(f"{annotation_file} is not a COCO instances json ({type(error).__name__}: {error}); "
                            "re-download annotations_trainval2014.zip") from None
        for stray in (root / COCO_LABEL_DIR / split).glob(".*.png.*.tmp"):  # left by a killed run
            stray.unlink(missing_ok=True)
        results = parallel_map(build_coco_label, tasks, workers, f"labels {split}")
        problems += [problem for _, problem in results if problem]
        summaries[split] = CocoSplitSummary(len(tasks), sum(state == "built" for state, _ in results),
                                            sum(state == "kept" for state, _ in results))
        lists[split] = "".join(f"{task.image.relative_to(root)} {task.label.relative_to(root)}\n" for task in tasks)
    if problems:
        raise GFSSError(f"{len(problems)} image(s) got no label: {_problem_list(problems)}; replace or re-download "
                        "them and rerun (labels already built are kept); train.txt/val.txt were not written")
    atomic_write_text(root / "train.txt", lists["train2014"])
    atomic_write_text(root / "val.txt", lists["val2014"])
    return summaries


@dataclass(frozen=True)
class CocoLabelTask:
    """One image: its files, its size as the json gives it, and its instances as (id, class, crowd, segmentation)."""

    image: Path
    label: Path
    height: int
    width: int
    instances: tuple[tuple[int, int, bool, object], ...]


def _read_json(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise GFSSError(f"cannot read {path} ({error}); re-download annotations_trainval2014.zip") from None


def coco_class_ids(dataset: dict, source: Path) -> dict[int, int]:
    """COCO category id -> class id 1..80, in sorted-category-id order; the names must be COCO's 80."""
    categories = sorted(dataset.get("categories", []), key=lambda category: category["id"])
    names = tuple(category["name"] for category in categories)
    if names != COCO_CLASSES:
        raise GFSSError(f"{source}: its categories sorted by id are {len(names)} ({', '.join(names[:3])}, ...), not "
                        f"COCO's 80 ({', '.join(COCO_CLASSES[:3])}, ...); use the COCO 2014 instances json")
    return {category["id"]: class_id for class_id, category in enumerate(categories, start=1)}


def _coco_label_tasks(root: Path, split: str, dataset: dict, source: Path) -> list[CocoLabelTask]:
    class_ids = coco_class_ids(dataset, source)
    instances: dict[int, list] = {}
    for annotation in dataset.get("annotations", []):
        if annotation["category_id"] not in class_ids:
            raise GFSSError(f"{source}: annotation {annotation['id']} has category_id {annotation['category_id']}, "
                            "which is not among its categories; re-download annotations_trainval2014.zip")
        instances.setdefault(annotation["image_id"], []).append(
            (annotation["id"], class_ids[annotation["category_id"]], bool(annotation.get("iscrowd", 0)),
             annotation["segmentation"]))
    tasks = []
    for image in sorted(dataset["images"], key=lambda image: image["file_name"]):
        name = image["file_name"]
        if Path(name).name != name or name in (".", "..") or len(name.split()) != 1:
            raise GFSSError(f"{source}: image file_name {name!r} is not a plain file name; use the official json")
        tasks.append(CocoLabelTask(root / split / name, root / COCO_LABEL_DIR / split / f"{Path(name).stem}.png",
                                   image["height"], image["width"], tuple(instances.get(image["id"], ()))))
    return tasks


def build_coco_label(task: CocoLabelTask) -> tuple[str, Optional[str]]:
    """Write one label PNG unless present: ("built" | "kept" | "failed", problem or None). Runs in a worker."""
    try:
        with Image.open(task.image) as image:
            size = image.size
    except FileNotFoundError:
        return "failed", f"{task.image} does not exist"
    except (OSError, UnidentifiedImageError) as error:
        return "failed", f"{task.image} cannot be read ({error})"
    if size != (task.width, task.height):
        return "failed", (f"{task.image} is {size[0]}x{size[1]} but the annotations say "
                          f"{task.width}x{task.height}")
    if task.label.exists():
        return "kept", None
    try:
        label = semantic_label(task.instances, task.height, task.width)
    except ValueError as error:
        return "failed", f"{task.image}: {error}"
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")  # uint8 2-D -> mode L
    atomic_write_bytes(task.label, buffer.getvalue())
    return "built", None


def instance_mask(segmentation, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of one instance: polygons (all parts merged), uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def semantic_label(instances, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] class ids from (id, class, crowd, segmentation) instances.

    Crowd regions are 255 (ignore) where no non-crowd instance covers them; non-crowd instances are
    drawn largest first, so a smaller object lying on a larger one stays visible.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    objects = []
    for instance_id, class_id, crowd, segmentation in instances:
        try:
            mask = instance_mask(segmentation, height, width).astype(bool)
        except Exception as error:  # pycocotools raises bare Exception for malformed input
            raise ValueError(f"annotation {instance_id} has a malformed segmentation ({error})") from None
        if mask.shape != (height, width):
            raise ValueError(f"annotation {instance_id} is a {mask.shape[1]}x{mask.shape[0]} mask on a "
                             f"{width}x{height} image")
        if crowd:
            label[mask] = 255
        else:
            objects.append((int(mask.sum()), class_id, mask))
    for _, class_id, mask in sorted(objects, key=lambda item: -item[0]):  # stable: ties keep json order
        label[mask] = class_id
    return label
