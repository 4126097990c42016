"""Segmentation datasets in the PASCAL VOC layout: a data root plus a list file.

The same code reads the built-in synthetic dataset and real PASCAL VOC. A list file has one item
per line, `image_rel label_rel`, both relative to the data root (VOC's `JPEGImages/x.jpg
SegmentationClass/x.png`). Labels are single-channel PNGs (palette or greyscale) holding class
ids and 255 for void.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from gfss_bench.errors import GFSSError
from gfss_bench.paths import atomic_write_bytes, cache_dir

SPLITS = ("train", "val")
FIX = ("replace the file, remove its line from the list file, or pass --skip-bad-images to `gfss-bench run` "
       "to skip such images (the result records which)")


class SegmentationList:
    """Images and labels listed in `list_file`, paths relative to `root`."""

    def __init__(self, root: Path | str, list_file: Path | str):
        self.root = Path(root).expanduser()
        self.list_file = Path(list_file).expanduser()
        if not self.root.is_dir():
            raise GFSSError(f"data root {self.root} is not a folder; check --data-root")
        try:
            self._list_bytes = self.list_file.read_bytes()
        except OSError as error:
            raise GFSSError(
                f"cannot read the list file {self.list_file} ({error.strerror or error}); "
                "check that the data root holds it") from None
        root_resolved = self.root.resolve()
        self.items: list[tuple[Path, Path]] = []
        text = self._list_bytes.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise GFSSError(
                    f"{self.list_file}, line {number}: expected 'image_path label_path', got {line.strip()!r}")
            paths = []
            for field in fields:
                path = (self.root / field).resolve()
                if Path(field).is_absolute() or not path.is_relative_to(root_resolved):
                    raise GFSSError(
                        f"{self.list_file}, line {number}: {field!r} points outside the data root "
                        f"{self.root}; list files must hold paths relative to the data root")
                paths.append(path)
            self.items.append((paths[0], paths[1]))
        if not self.items:
            raise GFSSError(f"list file {self.list_file} lists no images; regenerate it or pick another split")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        """Image file stem of every item (e.g. VOC's '2007_000033')."""
        return [image.stem for image, _ in self.items]

    def load_image(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB."""
        path = self.items[index][0]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise GFSSError(f"image {path} (listed in {self.list_file}) does not exist; {FIX}") from None
        except (OSError, UnidentifiedImageError) as error:
            raise GFSSError(f"image {path} (listed in {self.list_file}) cannot be read ({error}; a truncated "
                            f"or corrupt file); {FIX}") from None

    def load_label(self, index: int) -> np.ndarray:
        """uint8 [H, W] class ids (255 void), from a palette or greyscale PNG."""
        path = self.items[index][1]
        try:
            with Image.open(path) as label:
                if label.mode not in ("P", "L"):
                    raise GFSSError(
                        f"label {path} has image mode {label.mode}; labels must be single-channel "
                        "(palette or greyscale) PNGs of class ids, like VOC's SegmentationClass")
                return np.array(label, dtype=np.uint8)
        except FileNotFoundError:
            raise GFSSError(f"label {path} (listed in {self.list_file}) does not exist; {FIX}") from None
        except (OSError, UnidentifiedImageError) as error:
            raise GFSSError(f"label {path} (listed in {self.list_file}) cannot be read ({error}); {FIX}") from None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.load_image(index), self.load_label(index)
        if image.shape[:2] != label.shape:
            raise GFSSError(
                f"image {self.items[index][0]} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{self.items[index][1]} is {label.shape[1]}x{label.shape[0]}; {FIX}")
        return image, label

    def find_bad_items(self) -> list[tuple[int, str]]:
        """(index, reason) of every item whose image or label cannot be read or whose sizes differ."""
        bad = []
        for index in range(len(self)):
            try:
                self.load(index)
            except GFSSError as error:
                bad.append((index, str(error)))
        return bad

    def without(self, indices) -> "SegmentationList":
        """A copy without the items at `indices` (its cache key is that of the remaining list)."""
        drop = set(indices)
        subset = object.__new__(SegmentationList)
        subset.root, subset.list_file = self.root, self.list_file
        subset.items = [item for i, item in enumerate(self.items) if i not in drop]
        root = self.root.resolve()
        subset._list_bytes = "".join(f"{image.relative_to(root)} {label.relative_to(root)}\n"
                                     for image, label in subset.items).encode()
        if not subset.items:
            raise GFSSError(f"every item of {self.list_file} is unreadable; fix the data root")
        return subset

    def cache_key(self) -> str:
        """Hash of the list file content and the data root."""
        digest = hashlib.sha256(self._list_bytes)
        digest.update(b"\0" + str(self.root.resolve()).encode())
        return digest.hexdigest()[:24]

    def class_pixel_counts(self, progress: bool = False) -> np.ndarray:
        """int64 [len(self), 256]: pixels of each label value per item, at the original resolution.

        Cached in `cache_dir()/pixel-counts/<hash>.npy`, keyed by the list file content and root.
        """
        path = cache_dir() / "pixel-counts" / f"{self.cache_key()}.npy"
        if path.exists():
            try:
                counts = np.load(path)
                if counts.shape == (len(self), 256):
                    return counts
            except (OSError, ValueError):
                pass  # corrupt cache: recompute
        counts = np.zeros((len(self), 256), dtype=np.int64)
        indices = range(len(self))
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"counting label pixels ({self.list_file.name})")
        for i in indices:
            counts[i] = np.bincount(self.load_label(i).ravel(), minlength=256)
        buffer = io.BytesIO()
        np.save(buffer, counts)
        atomic_write_bytes(path, buffer.getvalue())
        return counts

    def present_classes(self, index: int, counts: Optional[np.ndarray] = None) -> list[int]:
        """Class ids 1..254 present in item `index` (from the pixel counts)."""
        counts = self.class_pixel_counts() if counts is None else counts
        return [int(c) for c in np.nonzero(counts[index, 1:255])[0] + 1]


def open_split(benchmark, split: str, data_root: Optional[Path | str] = None) -> SegmentationList:
    """The train or val split of a benchmark's dataset as a `SegmentationList`."""
    if split not in SPLITS:
        raise GFSSError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if benchmark.dataset == "synthetic":
        from gfss_bench.benchmark.synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset()
    else:
        if data_root is None:
            raise GFSSError(
                f"benchmark {benchmark.name!r} needs its dataset: pass --data-root pointing to the "
                f"folder that holds {split}.txt, JPEGImages/ and the label folder")
        root = Path(data_root).expanduser()
    return SegmentationList(root, root / f"{split}.txt")
