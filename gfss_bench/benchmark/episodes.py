"""Seeded GFSS episodes (facts §4): one support set per run, every other eligible val image a query.

A run's episode is a pure function of (seed, benchmark, fold, shot, run index) and the data, so
every method sees the same supports and queries and comparisons between methods are paired.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from gfss_bench.errors import GFSSError
from gfss_bench.protocols import Benchmark


@dataclass(frozen=True)
class Episode:
    """Indices into the evaluation split: supports[j] holds the K images of novel class j."""

    run: int
    seed: int
    supports: tuple[tuple[int, ...], ...]
    queries: tuple[int, ...]


def run_seed(seed: int, benchmark: str, fold: int, shot: int, run: int) -> int:
    """A 32-bit seed that depends on every coordinate of the run (stable across processes)."""
    key = f"{seed}/{benchmark}/{fold}/{shot}/{run}".encode()
    return zlib.crc32(key)


def support_candidates(benchmark: Benchmark, fold: int, pixel_counts: np.ndarray) -> list[np.ndarray]:
    """Per novel class, the images with >= min_support_pixels of it and no other novel class."""
    novel = list(benchmark.novel_classes(fold))
    novel_present = pixel_counts[:, novel] > 0
    candidates = []
    for j, cls in enumerate(novel):
        others = np.delete(novel_present, j, axis=1).any(axis=1)
        ok = (pixel_counts[:, cls] >= benchmark.min_support_pixels) & ~others
        candidates.append(np.flatnonzero(ok))
    return candidates


def query_candidates(benchmark: Benchmark, pixel_counts: np.ndarray) -> np.ndarray:
    """Images that contain at least one base or novel class."""
    return np.flatnonzero(pixel_counts[:, 1:benchmark.num_classes + 1].sum(axis=1) > 0)


def make_episode(benchmark: Benchmark, fold: int, shot: int, run: int, seed: int,
                 pixel_counts: np.ndarray, split_name: str = "val") -> Episode:
    """Draw the run's support set (K per novel class, repeated if fewer exist) and its queries."""
    if shot < 1:
        raise GFSSError(f"--shot must be >= 1, got {shot}")
    episode_seed = run_seed(seed, benchmark.name, fold, shot, run)
    rng = np.random.default_rng(episode_seed)
    supports = []
    for cls, candidates in zip(benchmark.novel_classes(fold), support_candidates(benchmark, fold, pixel_counts)):
        if candidates.size == 0:
            raise GFSSError(
                f"novel class {cls} ({benchmark.class_names[cls - 1]}) of {benchmark.name} fold {fold} has no "
                f"support candidate in the {split_name} split (needs >= {benchmark.min_support_pixels} pixels "
                "of it and no other novel class); check the data or lower the minimum support area")
        if candidates.size >= shot:
            chosen = rng.choice(candidates, size=shot, replace=False)
        else:  # facts §4: repeat the found ones
            chosen = np.resize(rng.permutation(candidates), shot)
        supports.append(tuple(int(i) for i in chosen))
    used = {i for group in supports for i in group}
    queries = np.array([i for i in query_candidates(benchmark, pixel_counts) if i not in used], dtype=np.int64)
    if benchmark.shuffle_queries:
        queries = rng.permutation(queries)
    if benchmark.max_queries is not None:
        queries = queries[:benchmark.max_queries]
    return Episode(run, episode_seed, tuple(supports), tuple(int(i) for i in queries))
