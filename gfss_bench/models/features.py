"""Features of the frozen base segmenter, computed once where a run needs them.

Images are decoded and preprocessed (`transforms.preprocess`: resized, padded and normalised as the official code
does, float32) in DataLoader workers, moved through pinned memory on CUDA, and passed through the segmenter under
autocast when a reduced precision is chosen. Two sources share one interface, `batches(list of index lists) ->
iterator of (features, labels)`:

- `StoredFeatures`: every candidate image extracted up front in fixed chunks and then read back by every run
  and method, either in memory (float32; small datasets) or in a float16 memory-mapped file on disk
  (`--feature-cache DIR`; reused by later invocations, resumable, filled chunk by chunk).
- `StreamedFeatures`: each batch extracted when it is evaluated and dropped afterwards, so host memory stays
  bounded whatever the number of queries (COCO-20i: 10000 per run).

Chunks have a fixed size and fixed members, so a feature never depends on which run, method or process asked
for it first: this is what makes multi-process runs equal single-process ones bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gfss_bench.data.transforms import preprocess
from gfss_bench.errors import GFSSError
from gfss_bench.models.segmenter import IMAGENET_CONTRACT, InputContract, input_contract_of
from gfss_bench.paths import atomic_write_text

EXTRACTION_CHUNK = 16
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class FeatureConfig:
    """Where features live and how they are computed (none of this changes a result except `cache_dir`, which
    rounds features to float16 and is therefore recorded in the run spec as `feature_cache`)."""

    cache_dir: Optional[Path] = None  # --feature-cache: float16 memory-mapped features, reused across invocations
    memory_limit_gib: Optional[float] = None  # keep every candidate's features in RAM when they fit in this
    # much; None: a quarter of the machine's physical memory
    loader_workers: Optional[int] = None  # DataLoader workers; None: 4 on CUDA (at most the CPU count), 0 on CPU

    def memory_limit_bytes(self) -> float:
        if self.memory_limit_gib is not None:
            return self.memory_limit_gib * 2 ** 30
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4

    def workers_for(self, device: torch.device) -> int:
        if self.loader_workers is not None:
            return self.loader_workers
        return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


class _PreparedBatches(Dataset):
    """Item b: the images of batches[b] preprocessed (float32 [n, 3, S, S]) and their labels (uint8 [n, S, S],
    original class ids, 255 padding). One item is one batch so that workers keep batch composition fixed."""

    def __init__(self, split, batches: Sequence[Sequence[int]], image_size: int,
                 contract: InputContract = IMAGENET_CONTRACT):
        self.split, self.batches, self.image_size = split, [list(b) for b in batches], image_size
        self.mean, self.std = contract.mean, contract.std

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [preprocess(*self.split.load(i), self.image_size, self.mean, self.std) for i in self.batches[position]]
        return (torch.stack([image for image, _ in pairs]),
                torch.stack([label for _, label in pairs]).to(torch.uint8))  # ids 0..255: uint8 is exact


class Extractor:
    """Runs the frozen segmenter over batches of one split's images."""

    def __init__(self, segmenter, split, image_size: int, device: torch.device, precision: str = "fp32",
                 workers: int = 0):
        if precision not in PRECISIONS:
            raise GFSSError(f"--feature-precision {precision!r} is unknown; choose from: {', '.join(PRECISIONS)}")
        self.segmenter, self.split, self.image_size, self.device = segmenter, split, image_size, device
        self.precision, self.workers = precision, workers

    @torch.no_grad()
    def run(self, batches: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 features [n, C, h, w] on the device, uint8 labels [n, S, S] on the CPU) per batch, in order."""
        if not batches:
            return
        prepared = _PreparedBatches(self.split, batches, self.image_size, input_contract_of(self.segmenter))
        loader = DataLoader(prepared, batch_size=None, shuffle=False,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if self.workers else None)
        dtype = PRECISIONS[self.precision]
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                features = self.segmenter.extract_features(images)
            yield features.float(), labels

    @torch.no_grad()
    def feature_shape(self) -> tuple[int, ...]:
        """(C, h, w) of one image's features, measured on a blank input of the evaluation size."""
        images = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        return tuple(self.segmenter.extract_features(images).shape[1:])


def chunked(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[start:start + size]) for start in range(0, len(indices), size)]


class StreamedFeatures:
    """Extract each requested batch when it is needed; nothing is kept."""

    def __init__(self, extractor: Extractor):
        self.extractor = extractor

    def batches(self, batches: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.extractor.run(batches)


class _MemoryArrays:
    """float32 features and uint8 labels of n rows in RAM, allocated at the first write."""

    def __init__(self, rows: int):
        self.rows, self.features, self.labels = rows, None, None
        self.done = np.zeros(0, dtype=bool)

    def prepare(self, num_chunks: int, feature_shape: tuple, label_shape: tuple) -> None:
        if self.features is None:
            self.features = torch.empty((self.rows, *feature_shape), dtype=torch.float32)
            self.labels = torch.empty((self.rows, *label_shape), dtype=torch.uint8)
        if self.done.size != num_chunks:
            self.done = np.zeros(num_chunks, dtype=bool)

    def write(self, rows: slice, features: torch.Tensor, labels: torch.Tensor, chunk: int) -> None:
        self.features[rows] = features.cpu()
        self.labels[rows] = labels
        self.done[chunk] = True

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(rows)
        return self.features[index], self.labels[index]


class _DiskArrays:
    """float16 features and uint8 labels in memory-mapped files under `folder`, with one done-flag per chunk.

    A chunk's flag is set only after its rows are flushed, so an interrupted fill redoes at most the chunks in
    flight; processes that fill different chunks of the same folder at once do not interfere.
    """

    def __init__(self, folder: Path, rows: int, description: dict):
        self.folder, self.rows, self.description = folder, rows, description
        self.features = self.labels = self.done = None
        self._open_existing()

    def _open_existing(self) -> None:
        meta = self.folder / "meta.json"
        if not meta.exists():
            return
        try:
            info = json.loads(meta.read_text())
            shapes = info["feature_shape"], info["label_shape"], info["num_chunks"]
            self._map(*shapes, mode="r+")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise GFSSError(f"the feature cache {self.folder} is damaged ({error}); delete that folder and rerun "
                            "(it is rebuilt)") from None

    def _map(self, feature_shape, label_shape, num_chunks, mode: str) -> None:
        self.features = np.lib.format.open_memmap(self.folder / "features.npy", mode=mode, dtype=np.float16,
                                                  shape=(self.rows, *feature_shape))
        self.labels = np.lib.format.open_memmap(self.folder / "labels.npy", mode=mode, dtype=np.uint8,
                                                shape=(self.rows, *label_shape))
        self.done = np.lib.format.open_memmap(self.folder / "done.npy", mode=mode, dtype=np.uint8,
                                              shape=(num_chunks,))

    def prepare(self, num_chunks: int, feature_shape: tuple, label_shape: tuple) -> None:
        if self.features is not None:
            if tuple(self.features.shape[1:]) != tuple(feature_shape):
                raise GFSSError(f"the feature cache {self.folder} holds features of shape "
                                f"{tuple(self.features.shape[1:])}, not {tuple(feature_shape)}; delete it and rerun")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._map(feature_shape, label_shape, num_chunks, mode="w+")
        except OSError as error:
            raise GFSSError(f"cannot create the feature cache in {self.folder} ({error.strerror or error}); "
                            "check --feature-cache and the free disk space") from None
        atomic_write_text(self.folder / "meta.json", json.dumps(
            {**self.description, "feature_shape": list(feature_shape), "label_shape": list(label_shape),
             "num_chunks": num_chunks, "dtype": "float16"}, indent=1))

    def write(self, rows: slice, features: torch.Tensor, labels: torch.Tensor, chunk: int) -> None:
        self.features[rows] = features.cpu().numpy().astype(np.float16)
        self.labels[rows] = labels.numpy()
        self.features.flush()
        self.labels.flush()
        self.done[chunk] = 1
        self.done.flush()

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.argsort(rows)  # sorted reads from the memory map, then back to the requested order
        features = np.empty((len(rows), *self.features.shape[1:]), dtype=np.float16)
        labels = np.empty((len(rows), *self.labels.shape[1:]), dtype=np.uint8)
        features[order] = self.features[rows[order]]
        labels[order] = self.labels[rows[order]]
        return torch.from_numpy(features).float(), torch.from_numpy(labels)


class StoredFeatures:
    """Features of a fixed, sorted list of split indices, extracted in fixed chunks and then read back."""

    def __init__(self, extractor: Extractor, indices: Sequence[int], cache_dir: Optional[Path] = None,
                 description: Optional[dict] = None):
        self.extractor = extractor
        self.indices = sorted(int(i) for i in indices)
        self.rows = {index: row for row, index in enumerate(self.indices)}
        self.chunks = chunked(self.indices, EXTRACTION_CHUNK)
        if cache_dir is None:
            self.arrays = _MemoryArrays(len(self.indices))
        else:
            description = {**(description or {}), "indices_sha256": hashlib.sha256(
                np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()}
            key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
            self.arrays = _DiskArrays(Path(cache_dir).expanduser() / key, len(self.indices), description)

    @property
    def on_disk(self) -> bool:
        return isinstance(self.arrays, _DiskArrays)

    def missing_chunks(self) -> list[int]:
        done = self.arrays.done
        return [c for c in range(len(self.chunks)) if done is None or done.size != len(self.chunks) or not done[c]]

    def fill(self, chunks: Sequence[int], on_chunk: Callable[[int], None] = lambda n: None) -> None:
        """Extract and store the given chunks (those already done elsewhere are skipped)."""
        missing = set(self.missing_chunks())
        todo = [c for c in chunks if c in missing]
        for chunk, (features, labels) in zip(todo, self.extractor.run([self.chunks[c] for c in todo])):
            self.arrays.prepare(len(self.chunks), tuple(features.shape[1:]), tuple(labels.shape[1:]))
            start = chunk * EXTRACTION_CHUNK
            self.arrays.write(slice(start, start + len(self.chunks[chunk])), features, labels, chunk)
            on_chunk(len(self.chunks[chunk]))

    def batches(self, batches: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.missing_chunks():
            raise RuntimeError("StoredFeatures.batches before every chunk was filled")
        device = self.extractor.device
        for batch in batches:
            try:
                rows = np.array([self.rows[int(i)] for i in batch], dtype=np.int64)
            except KeyError as error:
                raise RuntimeError(f"image {error} is not among the stored candidates") from None
            features, labels = self.arrays.read(rows)
            yield features.to(device, non_blocking=True), labels


def segmenter_fingerprint(segmenter) -> str:
    """sha256 of the segmenter's parameters and buffers: part of the feature-cache key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(segmenter.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
