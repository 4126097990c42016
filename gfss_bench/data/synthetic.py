"""The built-in synthetic GFSS dataset: procedurally generated scenes in the PASCAL VOC layout.

Every image holds 1-4 objects on a cluttered background. The 20 object classes differ by SHAPE
(10 shape families, each shared by two classes) and TEXTURE (20 distinct binary patterns); the two
colours of every instance are random, so colour never identifies a class. Objects get a random
size, rotation and position and may occlude each other. As in VOC, a void band (label 255) two
pixels wide runs along every boundary between different labels.

Everything is a pure function of (`SEED`, split, image index), so the data are identical on every
machine. The dataset is written once to `cache_dir()/synthetic/v<VERSION>/`:

    JPEGImages/<name>.jpg          RGB, JPEG quality 90
    SegmentationClass/<name>.png   palette PNG (VOC palette), values 0..20 and 255
    train.txt, val.txt             lines "JPEGImages/<name>.jpg SegmentationClass/<name>.png"

Bump `VERSION` whenever the output changes: the shipped segmenter weights are keyed on it.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gfss_bench.paths import cache_dir, usual_mode

VERSION = 1
SEED = 20240601
NUM_CLASSES = 20
SPLIT_SIZES = {"train": 2000, "val": 500}
_SPLIT_IDS = {"train": 0, "val": 1}
VOID_WIDTH = 1  # pixels on each side of a label boundary (a 2-pixel band in total)
JPEG_QUALITY = 90

# Shape family of class k (1-based) is SHAPES[(k - 1) % 10]: classes k and k + 10 share a shape.
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon", "crescent", "halfdisk")
# Approximate area of each shape relative to its circumscribed unit disk, used to equalise sizes.
_SHAPE_AREA = {
    "circle": 1.0, "square": 0.92, "triangle": 0.41, "star": 0.42, "ring": 0.70, "cross": 0.70,
    "ellipse": 0.50, "hexagon": 0.83, "crescent": 0.45, "halfdisk": 0.50,
}
# Texture of class k is TEXTURES[k - 1]: (pattern, angle in degrees, period in pixels).
TEXTURES = (
    ("stripes", 0, 6), ("stripes", 90, 6), ("stripes", 45, 7), ("stripes", 45, 13),
    ("stripes", 0, 12), ("stripes", 90, 12), ("checker", 0, 9), ("checker", 45, 9),
    ("checker", 0, 16), ("dots", 0, 8), ("dots", 45, 13), ("grid", 0, 8),
    ("grid", 0, 14), ("grid", 45, 11), ("waves", 0, 8), ("waves", 90, 8),
    ("rings", 0, 7), ("spokes", 0, 14), ("solid", 0, 1), ("speckle", 0, 3),
)
assert len(TEXTURES) == NUM_CLASSES and len(set(TEXTURES)) == NUM_CLASSES


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), used for the label PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


# ----------------------------------------------------------------------------------------- rendering


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in object coordinates (u, v), the shape fitting in the unit disk."""
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    if shape == "circle":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.70
    if shape in ("triangle", "hexagon"):
        n = 3 if shape == "triangle" else 6
        sector = 2 * np.pi / n
        local = np.mod(phi, sector) - sector / 2
        return rho * np.cos(local) <= np.cos(np.pi / n)
    if shape == "star":
        t = np.abs(np.mod(phi * 5 / (2 * np.pi), 1.0) - 0.5) * 2  # 1 at the tips, 0 between
        return rho <= 0.38 + 0.62 * t ** 2
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if shape == "ellipse":
        return u ** 2 + (v / 0.5) ** 2 <= 1.0
    if shape == "crescent":
        return (rho <= 1.0) & ((u - 0.55) ** 2 + v ** 2 > 0.75 ** 2)
    if shape == "halfdisk":
        return (np.hypot(u, v + 0.4) <= 1.0) & (v >= -0.4)
    raise ValueError(shape)


def _texture(pattern: str, angle: float, period: float, x: np.ndarray, y: np.ndarray,
             u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary pattern (bool array) in image coordinates (x, y); (u, v) are object coordinates."""
    theta = np.deg2rad(angle + rng.uniform(-6, 6))
    a = (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0, 1)
    b = (-x * np.sin(theta) + y * np.cos(theta)) / period + rng.uniform(0, 1)
    if pattern == "stripes":
        return np.mod(a, 1.0) < 0.5
    if pattern == "checker":
        return (np.floor(a) + np.floor(b)) % 2 == 0
    if pattern == "dots":
        return np.hypot(np.mod(a, 1.0) - 0.5, np.mod(b, 1.0) - 0.5) < 0.3
    if pattern == "grid":
        width = 2.0 / period
        return (np.mod(a, 1.0) < width) | (np.mod(b, 1.0) < width)
    if pattern == "waves":
        return np.mod(a + 0.35 * np.sin(2 * np.pi * b * period / 20.0), 1.0) < 0.5
    if pattern == "rings":
        return np.mod(np.hypot(u, v) * 40.0 / period + rng.uniform(0, 1), 1.0) < 0.5
    if pattern == "spokes":
        return np.mod(np.arctan2(v, u) * period / (2 * np.pi) + rng.uniform(0, 1), 1.0) < 0.5
    if pattern == "solid":
        return np.zeros_like(x, dtype=bool)
    if pattern == "speckle":
        h, w = x.shape
        cells = rng.random((h // 3 + 2, w // 3 + 2)) < 0.5
        return cells[(y // 3).astype(int), (x // 3).astype(int)]
    raise ValueError(pattern)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a light colour of independent random hues (large brightness gap), in random order."""
    dark = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.4))
    light = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.8, 1.0))
    colours = [np.array(dark, np.float32) * 255, np.array(light, np.float32) * 255]
    if rng.random() < 0.5:
        colours.reverse()
    return colours[0], colours[1]


def _background(rng: np.random.Generator, h: int, w: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth colour noise with a few thin clutter lines and small blobs (float32 [h, w, 3])."""
    grid = rng.uniform(40, 215, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    image = np.asarray(
        Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32).copy()
    for _ in range(rng.integers(2, 7)):  # thin lines across the image
        theta = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.5, 0.5) * max(h, w)
        dist = np.abs((x - w / 2) * np.cos(theta) + (y - h / 2) * np.sin(theta) - offset)
        image[dist < rng.uniform(0.5, 1.2)] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(2, 8)):  # small blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 5)
        image[np.hypot(x - cx, y - cy) < r] = rng.uniform(0, 255, 3)
    return image


def _void_band(label: np.ndarray, width: int = VOID_WIDTH) -> np.ndarray:
    """Pixels within `width` (Chebyshev) of a pixel with a different label."""
    h, w = label.shape
    padded = np.pad(label, width, mode="edge")
    band = np.zeros((h, w), dtype=bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                band |= padded[width + dy:width + dy + h, width + dx:width + dx + w] != label
    return band


def generate_sample(split: str, index: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (image uint8 [H, W, 3] before JPEG coding, label uint8 [H, W]).

    A pure function of (seed, split, index).
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    long_side = int(rng.integers(96, 129))
    short_side = int(rng.integers(64, long_side + 1))
    h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(rng, h, w, x, y)
    label = np.zeros((h, w), dtype=np.uint8)

    num_objects = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.30, 0.20, 0.15]))
    for _ in range(num_objects):
        class_id = int(rng.integers(1, NUM_CLASSES + 1))
        shape = SHAPES[(class_id - 1) % len(SHAPES)]
        area = h * w * rng.uniform(0.09, 0.28)
        radius = np.sqrt(area / (np.pi * _SHAPE_AREA[shape]))
        radius = min(radius, 0.62 * min(h, w))
        cy = rng.uniform(0.3 * radius, h - 0.3 * radius)
        cx = rng.uniform(0.3 * radius, w - 0.3 * radius)
        rotation = rng.uniform(0, 2 * np.pi)
        stretch = rng.uniform(0.85, 1.15)
        dx, dy = x - cx, y - cy
        u = (dx * np.cos(rotation) + dy * np.sin(rotation)) / (radius * stretch)
        v = (-dx * np.sin(rotation) + dy * np.cos(rotation)) * stretch / radius
        mask = _shape_mask(shape, u, v)
        if not mask.any():
            continue
        pattern, angle, period = TEXTURES[class_id - 1]
        on = _texture(pattern, angle, period, x, y, u * radius, v * radius, rng)
        first, second = _contrasting_colours(rng)
        shade = 1.0 + 0.15 * (u * np.cos(rotation) + v * np.sin(rotation))[..., None] * rng.uniform(-1, 1)
        colour = np.where(on[..., None], first, second) * shade
        image[mask] = colour[mask]
        label[mask] = class_id

    label[_void_band(label)] = 255
    image += rng.normal(0, 5, size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


# ----------------------------------------------------------------------------------------- writing


def sample_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _write_split(root: Path, split: str, count: int, seed: int) -> None:
    palette = voc_palette()
    lines = []
    for index in range(count):
        name = sample_name(split, index)
        image, label = generate_sample(split, index, seed)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY)
        png = Image.frombytes("P", label.shape[::-1], label.tobytes())
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{name}.png", optimize=False)
        lines.append(f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n")
    (root / f"{split}.txt").write_text("".join(lines))


def write_dataset(root: Path, sizes: dict[str, int] | None = None, seed: int = SEED) -> Path:
    """Generate the dataset into `root` (which must not exist yet) atomically; returns `root`.

    Files are written to a temporary folder next to `root` that is renamed into place at the end,
    so an interrupted or concurrent generation never leaves a partial dataset at `root`.
    """
    root = Path(root)
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        tmp.chmod(usual_mode(folder=True))  # mkdtemp's 0700 would make a shared cache unreadable to others
        (tmp / "JPEGImages").mkdir()
        (tmp / "SegmentationClass").mkdir()
        for split, count in sizes.items():
            _write_split(tmp, split, count, seed)
        (tmp / "README.txt").write_text(
            f"gfss-bench synthetic dataset v{VERSION} (seed {seed}); generated by "
            "gfss_bench.data.synthetic. Safe to delete: it is regenerated on demand.\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "val.txt").exists():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_stale_temporaries(root: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary folders of generations interrupted more than `max_age_s` ago."""
    import time

    if not root.parent.is_dir():
        return
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def synthetic_root() -> Path:
    return cache_dir() / "synthetic" / f"v{VERSION}"


def ensure_synthetic_dataset(progress: bool = True) -> Path:
    """The root of the synthetic dataset, generating it on first use (about 10-20 s)."""
    root = synthetic_root()
    if (root / "train.txt").exists() and (root / "val.txt").exists():
        return root
    _remove_stale_temporaries(root)
    if progress:
        import sys

        print(f"generating the synthetic dataset v{VERSION} in {root} ...", file=sys.stderr, flush=True)
    return write_dataset(root)

