"""Seeded GFSS episodes (facts §4): one support set per run, every other eligible val image a query.

A run's episode is a pure function of (seed, benchmark, fold, shot, run index) and the data, so
every method sees the same supports and queries and comparisons between methods are paired.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from gfss_bench.errors import GFSSError
from gfss_bench.protocols import Benchmark, EvaluationSettings


@dataclass(frozen=True)
class Episode:
    """supports[j]: the K images of novel class j (indices into the support split, val unless the settings say
    train); queries: indices into the val split."""

    run: int
    seed: int
    supports: tuple[tuple[int, ...], ...]
    queries: tuple[int, ...]


def run_seed(seed: int, benchmark: str, fold: int, shot: int, run: int) -> int:
    """A 32-bit seed that depends on every coordinate of the run (stable across processes)."""
    key = f"{seed}/{benchmark}/{fold}/{shot}/{run}".encode()
    return zlib.crc32(key)


def support_candidates(benchmark: Benchmark, fold: int, pixel_counts: np.ndarray,
                       settings: EvaluationSettings | None = None) -> list[np.ndarray]:
    """Per novel class, the images with >= min_support_pixels of it and (by default) no other novel class."""
    settings = settings or benchmark.evaluation_settings()
    novel = list(benchmark.novel_classes(fold))
    novel_present = pixel_counts[:, novel] > 0
    candidates = []
    for j, cls in enumerate(novel):
        ok = pixel_counts[:, cls] >= settings.min_support_pixels
        if settings.single_novel_supports:
            ok &= ~np.delete(novel_present, j, axis=1).any(axis=1)
        candidates.append(np.flatnonzero(ok))
    return candidates


def query_candidates(benchmark: Benchmark, pixel_counts: np.ndarray) -> np.ndarray:
    """Images that contain at least one base or novel class."""
    return np.flatnonzero(pixel_counts[:, 1:benchmark.num_classes + 1].sum(axis=1) > 0)


def make_episode(benchmark: Benchmark, fold: int, shot: int, run: int, seed: int, pixel_counts: np.ndarray,
                 settings: EvaluationSettings | None = None, support_pixel_counts: np.ndarray | None = None
                 ) -> Episode:
    """Draw the run's support set (K per novel class, repeated if fewer exist) and its queries.

    `pixel_counts` are those of the val split (the queries). With `settings.support_source == "train"`,
    `support_pixel_counts` are those of the train split and supports are not removed from the queries.
    """
    settings = settings or benchmark.evaluation_settings()
    if shot < 1:
        raise GFSSError(f"--shot must be >= 1, got {shot}")
    from_val = settings.support_source == "val"
    if not from_val and support_pixel_counts is None:
        raise ValueError("support_source 'train' needs the train split's pixel counts")
    episode_seed = run_seed(seed, benchmark.name, fold, shot, run)
    rng = np.random.default_rng(episode_seed)
    supports = []
    support_counts = pixel_counts if from_val else support_pixel_counts
    for cls, candidates in zip(benchmark.novel_classes(fold),
                               support_candidates(benchmark, fold, support_counts, settings)):
        if candidates.size == 0:
            alone = " and no other novel class" if settings.single_novel_supports else ""
            raise GFSSError(
                f"novel class {cls} ({benchmark.class_names[cls - 1]}) of {benchmark.name} fold {fold} has no "
                f"support candidate in the {settings.support_source} split (needs >= {settings.min_support_pixels} "
                f"pixels of it{alone}); check the data, lower --min-support-pixels or change --support-source")
        if candidates.size >= shot:
            chosen = rng.choice(candidates, size=shot, replace=False)
        else:  # facts §4: repeat the found ones
            chosen = np.resize(rng.permutation(candidates), shot)
        supports.append(tuple(int(i) for i in chosen))
    used = {i for group in supports for i in group} if from_val else set()
    queries = np.array([i for i in query_candidates(benchmark, pixel_counts) if i not in used], dtype=np.int64)
    if benchmark.shuffle_queries:
        queries = rng.permutation(queries)
    if settings.max_queries is not None:
        queries = queries[:settings.max_queries]
    return Episode(run, episode_seed, tuple(supports), tuple(int(i) for i in queries))
