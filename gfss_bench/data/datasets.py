"""Segmentation datasets in the PASCAL VOC layout: a data root plus a list file.

The same code reads the built-in synthetic dataset and real PASCAL VOC. A list file has one item
per line, `image_rel label_rel`, both relative to the data root (VOC's `JPEGImages/x.jpg
SegmentationClass/x.png`). Labels are single-channel PNGs (palette or greyscale) holding class
ids and 255 for void.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from gfss_bench.errors import GFSSError
from gfss_bench.paths import atomic_write_bytes, cache_dir
from gfss_bench.userfiles import quote

SPLITS = ("train", "val")
FIX = ("replace the file, remove its line from the list file, or pass --skip-bad-images to `gfss-bench run` "
       "to skip such images (the result records which)")


MAX_PIXELS_VARIABLE = "GFSS_BENCH_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels, e.g. 10000x10000; PASCAL and COCO images are under 0.5


class ImageTooLarge(ValueError):
    """An image or label above the pixel limit (`max_image_pixels`); the message follows the file's name."""


def max_image_pixels() -> int:
    """The most pixels an image or label may have: $GFSS_BENCH_MAX_IMAGE_PIXELS, default 100 megapixels. Checked
    from the file's header before it is decoded, so a small file that would decode to gigabytes is refused. A
    value above PIL's own limit raises that too (`PIL.Image.MAX_IMAGE_PIXELS`, which refuses twice its value)."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise GFSSError(f"{MAX_PIXELS_VARIABLE}={value[:40]!r} is not a positive number of pixels; unset it (default "
                        f"{DEFAULT_MAX_PIXELS}) or give one such as 400000000")
    limit = int(value)
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1  # the user asked for larger images: let PIL open them
    return limit


def check_pixels(width: int, height: int) -> None:
    """ImageTooLarge when a `width` x `height` image is above `max_image_pixels`."""
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageTooLarge(f"is {width}x{height} = {width * height:,} pixels, above the limit of {limit:,} (set "
                            f"{MAX_PIXELS_VARIABLE} to raise it)")


def _pil_open(source):
    """`Image.open` (header only), with PIL's own decompression-bomb refusal as ImageTooLarge."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"is too large to decode ({error}; set {MAX_PIXELS_VARIABLE} to raise the limit)") \
                from None


@contextmanager
def open_label(path: Path):
    """The PIL image of a label file (its header read, pixels not yet decoded), within the pixel limit."""
    with _pil_open(path) as label:
        check_pixels(*label.size)
        yield label


def _check_encoded_size(data: bytes) -> None:
    """Refuse an encoded image above the pixel limit from its header (ImageTooLarge); one whose header PIL cannot
    read is left to OpenCV."""
    try:
        image = _pil_open(io.BytesIO(data))
    except ImageTooLarge:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many types for headers it does not know; OpenCV decides
        return
    with image:
        check_pixels(*image.size)


def decode_image(data: bytes) -> Optional[np.ndarray]:
    """uint8 RGB [H, W, 3] of an encoded image, or None when it cannot be decoded or is a truncated JPEG; an image
    above the pixel limit (`max_image_pixels`) raises ImageTooLarge before it is decoded.

    As the official code: OpenCV's IMREAD_COLOR (which applies a JPEG's EXIF orientation, unlike PIL), then BGR to
    RGB. OpenCV 4 returns a truncated JPEG grey-filled, so those are refused here (`jpeg_is_complete`)."""
    if not data or (data[:2] == b"\xff\xd8" and not jpeg_is_complete(data)):
        return None
    _check_encoded_size(data)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG stream reaches its end-of-image marker: a walk over its segments, skipping each scan's
    entropy-coded data (where 0xFF is followed by 0x00 stuffing, a restart marker or fill bytes)."""
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:  # end of image
            return True
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            if pos + 4 > end:
                return False
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
                while True:
                    pos = data.find(b"\xff", pos)
                    if pos < 0 or pos + 1 >= end:
                        return False
                    following = data[pos + 1]
                    if following == 0x00 or 0xD0 <= following <= 0xD7:
                        pos += 2
                    elif following == 0xFF:
                        pos += 1
                    else:
                        break
    return False


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
                    f"{self.list_file}, line {number}: expected 'image_path label_path', got {quote(line.strip())}")
            paths = []
            for field in fields:
                # Checked as written, not resolved: a folder inside the root may be a symlink to another disk (a
                # common cluster layout), but no line may leave the root by itself.
                if posixpath.isabs(field) or ".." in field.replace("\\", "/").split("/"):
                    raise GFSSError(
                        f"{self.list_file}, line {number}: {quote(field)} points outside the data root "
                        f"{self.root} (an absolute path or '..'); list files must hold paths relative to the data "
                        "root, without '..'")
                paths.append(root_resolved / posixpath.normpath(field))
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
        """uint8 [H, W, 3] RGB, decoded as the official code does (`decode_image`)."""
        path = self.items[index][0]
        try:
            image = decode_image(path.read_bytes())
        except ImageTooLarge as problem:
            raise GFSSError(f"image {path} (listed in {self.list_file}) {problem}; {FIX}") from None
        except FileNotFoundError:
            raise GFSSError(f"image {path} (listed in {self.list_file}) does not exist; {FIX}") from None
        except OSError as error:
            raise GFSSError(f"image {path} (listed in {self.list_file}) cannot be read "
                            f"({error.strerror or error}); {FIX}") from None
        if image is None:
            raise GFSSError(f"image {path} (listed in {self.list_file}) cannot be read (OpenCV cannot decode it: a "
                            f"truncated or corrupt file, or not an image); {FIX}")
        return image

    def load_label(self, index: int) -> np.ndarray:
        """uint8 [H, W] class ids (255 void), from a palette or greyscale PNG.

        Read with PIL, which gives a palette PNG's indices (the class ids of VOC's SegmentationClass); the official
        code's OpenCV greyscale read would turn palette colours into grey levels. For greyscale PNGs (DIaM's
        SegmentationClassAug) both give the same bytes."""
        path = self.items[index][1]
        try:
            with open_label(path) as label:
                if label.mode not in ("P", "L"):
                    raise GFSSError(
                        f"label {path} has image mode {label.mode}; labels must be single-channel "
                        "(palette or greyscale) PNGs of class ids, like VOC's SegmentationClass")
                return np.array(label, dtype=np.uint8)
        except ImageTooLarge as problem:
            raise GFSSError(f"label {path} (listed in {self.list_file}) {problem}; {FIX}") from None
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
    """The train or val split of a benchmark's dataset as a `SegmentationList`: the generated synthetic data, else
    `data_root`, else the benchmark's own `data_root` (a YAML file's)."""
    if split not in SPLITS:
        raise GFSSError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if benchmark.generated:
        from gfss_bench.data.synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset()
    elif data_root is not None:
        root = Path(data_root).expanduser()
    elif benchmark.data_root is not None:
        root = benchmark.data_root
        if not root.is_dir():
            raise GFSSError(f"data root {root} (data_root of {benchmark.source or benchmark.name}) is not a folder; "
                            "fix data_root or pass --data-root")
    else:
        raise GFSSError(
            f"benchmark {benchmark.name!r} needs its dataset: pass --data-root pointing to the "
            f"folder that holds {split}.txt, JPEGImages/ and the label folder")
    return SegmentationList(root, root / f"{split}.txt")
