"""`gfss-bench data verify`: check a data root before a long run instead of failing in the middle of it.

Every listed image must decode, every label must be a single-channel PNG of the image's size holding
only background (0), the benchmark's class ids (1..num_classes) and 255.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import UnidentifiedImageError

from gfss_bench.data.datasets import SPLITS, ImageTooLarge, SegmentationList, decode_image, open_label
from gfss_bench.data.prepare import parallel_map
from gfss_bench.errors import GFSSError
from gfss_bench.protocols.catalog import Benchmark


@dataclass(frozen=True)
class Problem:
    split: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.split}: {self.path}: {self.message}"


@dataclass
class SplitCounts:
    images: int
    class_images: list[int]  # images holding each class id 1..num_classes (index 0: class 1)


@dataclass
class VerifyReport:
    benchmark: Benchmark
    root: Path
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark.name,
            "root": str(self.root),
            "ok": self.ok,
            "splits": {split: {"images": counts.images,
                               "class_images": dict(zip(self.benchmark.class_names, counts.class_images))}
                       for split, counts in self.splits.items()},
            "problem_count": len(self.problems),
            "problems": [{"split": p.split, "path": p.path, "problem": p.message} for p in self.problems],
        }


def verify_dataset(benchmark: Benchmark, root: Path | str, splits: Sequence[str] = SPLITS,
                   workers: Optional[int] = None) -> VerifyReport:
    """Check every image and label listed in `root/<split>.txt`; problems are collected, never raised."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GFSSError(f"--root {root} is not a folder; pass the data root that holds train.txt and val.txt")
    report = VerifyReport(benchmark, root)
    for split in splits:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            hint = f"; run `gfss-bench data prepare {benchmark.prepare} --root {root}`" if benchmark.prepare else ""
            report.problems.append(Problem(split, str(list_file), f"missing{hint}"))
            continue
        try:
            items = SegmentationList(root, list_file).items
        except GFSSError as error:  # malformed line, path leaving the root, empty list
            report.problems.append(Problem(split, str(list_file), str(error)))
            continue
        tasks = [(image, label, benchmark.num_classes) for image, label in items]
        class_images = np.zeros(benchmark.num_classes, dtype=np.int64)
        for classes, problems in parallel_map(check_item, tasks, workers, f"checking {split}"):
            class_images[np.asarray(classes, dtype=np.int64) - 1] += 1
            report.problems += [Problem(split, path, message) for path, message in problems]
        report.splits[split] = SplitCounts(len(items), class_images.tolist())
    return report


def check_item(task: tuple[Path, Path, int]) -> tuple[list[int], list[tuple[str, str]]]:
    """(class ids 1..num_classes present, [(path, problem)]) of one image/label pair. Runs in a worker."""
    image_path, label_path, num_classes = task
    problems = []
    image_size = None
    try:
        image = decode_image(image_path.read_bytes())  # the decoder of the runs, so their failures show here
    except ImageTooLarge as problem:
        problems.append((str(image_path), f"image {problem}"))
    except FileNotFoundError:
        problems.append((str(image_path), "image does not exist"))
    except OSError as error:
        problems.append((str(image_path), f"image cannot be read ({error.strerror or error})"))
    else:
        if image is None:
            problems.append((str(image_path), "image cannot be read (OpenCV cannot decode it: a truncated or corrupt "
                                              "file, or not an image)"))
        else:
            image_size = (image.shape[1], image.shape[0])
    try:
        with open_label(label_path) as label:
            if label.mode not in ("P", "L"):
                return [], problems + [(str(label_path), f"label has image mode {label.mode}; labels must be "
                                                         "single-channel (palette or greyscale) PNGs of class ids")]
            counts = np.bincount(np.asarray(label).ravel(), minlength=256)
    except ImageTooLarge as problem:
        return [], problems + [(str(label_path), f"label {problem}")]
    except FileNotFoundError:
        return [], problems + [(str(label_path), "label does not exist")]
    except (OSError, UnidentifiedImageError) as error:
        return [], problems + [(str(label_path), f"label cannot be read ({error})")]
    label_size = label.size
    if image_size is not None and image_size != label_size:
        problems.append((str(label_path), f"label is {label_size[0]}x{label_size[1]} but its image {image_path} "
                                          f"is {image_size[0]}x{image_size[1]}"))
    present = np.nonzero(counts)[0]
    invalid = [int(value) for value in present if num_classes < value < 255]
    if invalid:
        problems.append((str(label_path), f"label holds class id(s) {', '.join(map(str, invalid))}, outside "
                                          f"0..{num_classes} and 255 (wrong benchmark or broken labels)"))
    return [int(value) for value in present if 1 <= value <= num_classes], problems
