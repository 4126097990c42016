"""Benchmarks: which classes are novel in each fold, and the evaluation settings (docs/protocol.md §2, §4)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gfss_bench.errors import GFSSError
from gfss_bench.registry import Registry
from gfss_bench.userfiles import cut, quote

PASCAL_CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorcycle", "person", "pottedplant", "sheep", "sofa",
    "train", "tv",
)

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# Synthetic object classes: a shape and a texture each (see gfss_bench.data.synthetic).
SYNTHETIC_CLASSES = tuple(f"synth{i:02d}" for i in range(1, 21))

OFFICIAL_IMAGE_SIZE = 417
OFFICIAL_MIN_SUPPORT_PIXELS = 16 * 32 * 32
SYNTHETIC_IMAGE_SIZE = 97


def scaled_min_support_pixels(image_size: int) -> int:
    """The official 16384-pixel minimum at 417x417, scaled to another image size by area."""
    return int(round(OFFICIAL_MIN_SUPPORT_PIXELS * (image_size / OFFICIAL_IMAGE_SIZE) ** 2))


SUPPORT_SOURCES = ("val", "train")


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 9, 4096  # input sides; which ones a model takes is its input contract

@dataclass(frozen=True)
class EvaluationSettings:
    """How episodes are drawn and images prepared (docs/protocol.md §4); every benchmark has the official values as defaults.

    `image_size`: square input side after resize + pad; `min_support_pixels`: least pixels of its novel class a
    support image must have (original resolution); `max_queries`: queries per run after shuffling (None: every
    eligible image); `support_source`: the split supports are drawn from ("val" as in DIaM, or "train");
    `single_novel_supports`: a support image may contain no novel class but its own.
    """

    image_size: int
    min_support_pixels: int
    max_queries: Optional[int]
    support_source: str = "val"
    single_novel_supports: bool = True

    def __post_init__(self):
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:  # the segmenter checks its own sides at run
            raise GFSSError(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} (e.g. 417 or 97), "
                            f"got {quote(self.image_size)}")
        if self.min_support_pixels < 1:
            raise GFSSError(f"--min-support-pixels must be >= 1, got {quote(self.min_support_pixels)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise GFSSError(f"--queries must be >= 1, got {quote(self.max_queries)}")
        if self.support_source not in SUPPORT_SOURCES:
            raise GFSSError(f"--support-source {quote(self.support_source)} is unknown; choose from: "
                            f"{', '.join(SUPPORT_SOURCES)}")


@dataclass(frozen=True)
class Benchmark:
    """A GFSS benchmark: a dataset, its class names, the novel classes of each fold and eval settings.

    What the code does with a benchmark depends only on these fields, never on its name, so a benchmark
    registered by a plugin or read from a YAML file (`resolve_benchmark`) works wherever a built-in one does.
    """

    name: str
    description: str
    dataset: str  # short dataset name: the <dataset> folder of DIaM's model_ckpt/<dataset>/split<N>/ layout
    class_names: tuple[str, ...]
    fold_novel_classes: tuple[tuple[int, ...], ...]  # original class ids (1-based), per fold
    image_size: int = OFFICIAL_IMAGE_SIZE
    min_support_pixels: int = OFFICIAL_MIN_SUPPORT_PIXELS
    max_queries: Optional[int] = None  # None: every eligible val image
    shuffle_queries: bool = False
    batch_size: int = 16  # default number of queries adapted together (memory vs. speed)
    # The official code's validation batch (DIaM's batch_size_val): with a query cap the official sampler takes
    # max_queries // val_batch_size batches of it per run (docs/protocol.md §4a). 200 on PASCAL, 50 on COCO; 1 on
    # the synthetic benchmarks (no official code), so that --queries N scores N queries.
    val_batch_size: int = 200
    official_split_offset: int = 0  # DIaM numbers PASCAL-10i's folds 0/1 as splits 10/11 (checkpoint folders)
    support_source: str = "val"
    single_novel_supports: bool = True
    generated: bool = False  # the data is the built-in synthetic generator's (no --data-root; built-in segmenters)
    data_root: Optional[Path] = None  # where the data is when --data-root is not given (a YAML file's data_root)
    prepare: Optional[str] = None  # the `gfss-bench data prepare <this>` command that writes the list files
    train_epochs: int = 20  # default epochs of `gfss-bench train --arch pspnet-resnet50`
    source: Optional[Path] = None  # the YAML file this benchmark was read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_folds(self) -> int:
        return len(self.fold_novel_classes)

    def evaluation_settings(self, **overrides) -> EvaluationSettings:
        """The official settings of this benchmark, with `overrides` (field name -> value) applied."""
        settings = {"image_size": self.image_size, "min_support_pixels": self.min_support_pixels,
                    "max_queries": self.max_queries, "support_source": self.support_source,
                    "single_novel_supports": self.single_novel_supports}
        settings.update(overrides)
        return EvaluationSettings(**settings)

    @property
    def digest(self) -> Optional[str]:
        """None for the package's own benchmarks; otherwise a hash of everything in the definition that can
        change a number (classes, folds, evaluation settings). Run specs carry it, so editing a YAML or plugin
        benchmark changes the run ids of its results."""
        if self.name in BUILTIN_BENCHMARKS:
            return None
        definition = {"classes": list(self.class_names), "folds": [list(f) for f in self.fold_novel_classes],
                      "evaluation": asdict(self.evaluation_settings()),
                      "shuffle_queries": self.shuffle_queries, "val_batch_size": self.val_batch_size}
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]

    def check_fold(self, fold: int) -> int:
        if not 0 <= fold < self.num_folds:
            raise GFSSError(
                f"--fold {quote(fold)} is out of range for benchmark {self.name!r}: "
                f"choose from: {', '.join(map(str, range(self.num_folds)))}"
            )
        return fold

    def official_split(self, fold: int) -> int:
        """The split number of `fold` in the official code's folder names (`model_ckpt/<dataset>/split<N>/`)."""
        return self.check_fold(fold) + self.official_split_offset

    def novel_classes(self, fold: int) -> tuple[int, ...]:
        return tuple(sorted(self.fold_novel_classes[self.check_fold(fold)]))

    def base_classes(self, fold: int) -> tuple[int, ...]:
        novel = set(self.novel_classes(fold))
        return tuple(c for c in range(1, self.num_classes + 1) if c not in novel)

    def episode_classes(self, fold: int) -> tuple[int, ...]:
        """Original class id of each episode label 1..B+N (index 0 is background)."""
        return (0,) + self.base_classes(fold) + self.novel_classes(fold)

    def episode_class_names(self, fold: int) -> tuple[str, ...]:
        return ("background",) + tuple(self.class_names[c - 1] for c in self.episode_classes(fold)[1:])

    def episode_label_lut(self, fold: int) -> np.ndarray:
        """uint8 look-up table original label -> episode label (docs/protocol.md §1); unknown ids map to 255."""
        lut = np.full(256, 255, dtype=np.uint8)
        for episode_label, original in enumerate(self.episode_classes(fold)):
            lut[original] = episode_label
        return lut


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
MAX_CLASSES = 254  # label PNGs are uint8 and 255 is void


def check_definition(class_names: Sequence[str], folds: Sequence[Sequence[int]], where: str,
                     classes_key: str = "classes", folds_key: str = "folds") -> None:
    """Raise a GFSSError starting with `where` (a file or benchmark) and naming the key, unless the class names
    are distinct and non-empty and each fold is a non-empty set of ids 1..C leaving a base class; a class may be
    novel in one fold only (the folds partition the novel classes, as in every GFSS benchmark)."""
    if not class_names:
        raise GFSSError(f"{where}: {classes_key!r} is empty; list the class names of ids 1, 2, ...")
    if len(class_names) > MAX_CLASSES:
        raise GFSSError(f"{where}: {classes_key!r} holds {len(class_names)} classes; at most {MAX_CLASSES} fit "
                        "uint8 labels with 255 as void")
    seen: dict[str, int] = {}
    for class_id, class_name in enumerate(class_names, start=1):
        if not isinstance(class_name, str) or not class_name.strip():
            raise GFSSError(f"{where}: {classes_key}[{class_id - 1}] (class id {class_id}) must be a non-empty "
                            f"name, got {quote(class_name)}")
        if class_name in seen:
            raise GFSSError(f"{where}: {classes_key!r} names {quote(class_name)} twice (ids {seen[class_name]} and "
                            f"{class_id}); class names must be distinct")
        seen[class_name] = class_id
    if not folds:
        raise GFSSError(f"{where}: {folds_key!r} is empty; give each fold's list of novel class ids")
    num_classes = len(class_names)
    novel_in: dict[int, int] = {}
    for fold, novel in enumerate(folds):
        key = f"{folds_key}[{fold}]"
        if not novel:
            raise GFSSError(f"{where}: {key} is empty; every fold needs at least one novel class id")
        for class_id in novel:
            if isinstance(class_id, bool) or not isinstance(class_id, int):
                raise GFSSError(f"{where}: {key} must hold integer class ids, got {quote(class_id)}")
            if not 1 <= class_id <= num_classes:
                raise GFSSError(f"{where}: {key} holds class id {quote(class_id)}, outside 1..{num_classes} (the "
                                f"ids of {classes_key!r}; 0 is background)")
            if class_id in novel_in:
                other = novel_in[class_id]
                raise GFSSError(f"{where}: {key} lists class id {class_id} twice" if other == fold else
                                f"{where}: class id {class_id} ({cut(str(class_names[class_id - 1]))}) is novel in "
                                f"{folds_key}[{other}] and {key}; a class may be novel in one fold only")
            novel_in[class_id] = fold
        if len(novel) == num_classes:
            raise GFSSError(f"{where}: {key} makes every class novel; leave at least one base class")


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Make `benchmark` available under its name (`-b NAME`, `get_benchmark`) after checking its definition;
    a name that is already registered is an error. Returns `benchmark`."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark expects a Benchmark, got {type(benchmark).__name__}")
    check_definition(benchmark.class_names, benchmark.fold_novel_classes, f"benchmark {benchmark.name!r}",
                     "class_names", "fold_novel_classes")
    benchmark.evaluation_settings()  # validates the settings
    BENCHMARKS.add(benchmark.name, benchmark)
    return benchmark


def _contiguous_folds(num_classes: int, num_folds: int) -> tuple[tuple[int, ...], ...]:
    size = num_classes // num_folds
    return tuple(tuple(range(f * size + 1, (f + 1) * size + 1)) for f in range(num_folds))


def _interleaved_folds(num_classes: int, num_folds: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(range(f + 1, num_classes + 1, num_folds)) for f in range(num_folds))


register_benchmark(Benchmark(
    "pascal5i", "PASCAL VOC 2012 + SBD, 4 folds of 5 novel classes (15 base)", "pascal",
    PASCAL_CLASSES, _contiguous_folds(20, 4), prepare="pascal", train_epochs=50))
register_benchmark(Benchmark(
    "pascal10i", "PASCAL VOC 2012 + SBD, equal split: 2 folds of 10 novel classes (10 base); DIaM's splits 10/11",
    "pascal", PASCAL_CLASSES, _contiguous_folds(20, 2), official_split_offset=10, prepare="pascal", train_epochs=50))
register_benchmark(Benchmark(
    "coco20i", "COCO 2014, 4 interleaved folds of 20 novel classes (every 4th id; PFENet/DIaM split)", "coco",
    COCO_CLASSES, _interleaved_folds(80, 4), max_queries=10000, shuffle_queries=True, val_batch_size=50,
    prepare="coco"))
register_benchmark(Benchmark(
    "coco20i-contiguous", "COCO 2014, 4 contiguous folds of 20 novel classes (ids 20i+1..20i+20)", "coco",
    COCO_CLASSES, _contiguous_folds(80, 4), max_queries=10000, shuffle_queries=True, val_batch_size=50,
    prepare="coco"))
register_benchmark(Benchmark(
    "synthetic5i", "built-in synthetic scenes (no download), 4 folds of 5 novel classes out of 20", "synthetic",
    SYNTHETIC_CLASSES, _contiguous_folds(20, 4), image_size=SYNTHETIC_IMAGE_SIZE,
    min_support_pixels=scaled_min_support_pixels(SYNTHETIC_IMAGE_SIZE), batch_size=256, val_batch_size=1,
    generated=True))
register_benchmark(Benchmark(
    "synthetic10i", "built-in synthetic scenes (no download), equal split: 2 folds of 10 novel classes",
    "synthetic", SYNTHETIC_CLASSES, _contiguous_folds(20, 2), image_size=SYNTHETIC_IMAGE_SIZE,
    min_support_pixels=scaled_min_support_pixels(SYNTHETIC_IMAGE_SIZE), batch_size=256, val_batch_size=1,
    generated=True))

BUILTIN_BENCHMARKS = frozenset(BENCHMARKS.names())


def get_benchmark(name: str) -> Benchmark:
    return BENCHMARKS.get(name)
