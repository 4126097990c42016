"""Seeded GFSS episodes (docs/protocol.md §4, §4a): one support set per run and the run's queries.

Two samplers draw the support sets. `diam` (the default) is the official one of DIaM/BCM (docs/protocol.md §4a): one Python
`random.Random(seed)` stream per (benchmark, fold, shot) evaluation, which the runs continue, so a given seed gives
the official support images, repeats included (a class with fewer than K candidates gets repeated slots that, for
every class but the first, hold the first class's images). `independent` draws each run from its own numpy
generator, seeded by (seed, benchmark, fold, shot, run), so a run's episode does not depend on the other runs; it
repeats a short class's own images. Support sets can also be read from a file written by
`gfss-bench episodes --format json` (`EpisodeFile`).

A run's query list is every val image with a base or novel pixel, minus the run's supports. Without a query cap
every one is scored. With a cap (`max_queries`, COCO's official 10000), `diam` replays the official shuffled torch
DataLoader (`official_query_runs`): its batches of the benchmark's validation batch size, continued across runs;
`independent` keeps the first `max_queries` of a permutation drawn from the run's seed (when `shuffle_queries`).
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from gfss_bench.errors import GFSSError
from gfss_bench.protocols import Benchmark, EvaluationSettings
from gfss_bench.userfiles import InputProblem, cut, parse_json, quote, read_regular

SAMPLERS = ("diam", "independent")
FILE_PREFIX = "file:"
MAX_EPISODE_FILE_BYTES = 16 << 20  # the episodes of every fold and shot of COCO-20i take well under 1 MiB


@dataclass(frozen=True)
class Episode:
    """supports[j]: the K slots of novel class j (indices into the support split, val unless the settings say
    train; an official repeat can hold an earlier class's image, with that image's own mask); queries: indices into
    the val split in evaluation order (repeats possible with a query cap); seed: the run's own seed (`run_seed`),
    which methods receive."""

    run: int
    seed: int
    supports: tuple[tuple[int, ...], ...]
    queries: tuple[int, ...]


def check_episodes(name: str) -> str:
    """`name` if it is a sampler or `file:<16 hex digits>` (a file's `file_digest`); else a GFSSError."""
    if name not in SAMPLERS and not re.fullmatch(rf"{FILE_PREFIX}[0-9a-f]{{16}}", name):
        raise GFSSError(f"--episodes {quote(name)} is unknown; choose from: {', '.join(SAMPLERS)}, or a JSON file "
                        "written by `gfss-bench episodes --format json`")
    return name


def run_seed(seed: int, benchmark: str, fold: int, shot: int, run: int) -> int:
    """A 32-bit seed that depends on every coordinate of the run (stable across processes)."""
    key = f"{seed}/{benchmark}/{fold}/{shot}/{run}".encode()
    return zlib.crc32(key)


def _novel_present(benchmark: Benchmark, fold: int, pixel_counts: np.ndarray) -> np.ndarray:
    """bool [images, N]: which novel classes each image holds (any pixel count)."""
    return pixel_counts[:, list(benchmark.novel_classes(fold))] > 0


def area_candidates(benchmark: Benchmark, fold: int, pixel_counts: np.ndarray,
                    settings: EvaluationSettings) -> list[np.ndarray]:
    """Per novel class (increasing id), the images with >= min_support_pixels of it, in list-file order."""
    return [np.flatnonzero(pixel_counts[:, cls] >= settings.min_support_pixels)
            for cls in benchmark.novel_classes(fold)]


def support_candidates(benchmark: Benchmark, fold: int, pixel_counts: np.ndarray,
                       settings: EvaluationSettings | None = None) -> list[np.ndarray]:
    """Per novel class, the images with >= min_support_pixels of it and (by default) no other novel class."""
    settings = settings or benchmark.evaluation_settings()
    candidates = area_candidates(benchmark, fold, pixel_counts, settings)
    if not settings.single_novel_supports:
        return candidates
    present = _novel_present(benchmark, fold, pixel_counts)
    return [c[~np.delete(present[c], j, axis=1).any(axis=1)] for j, c in enumerate(candidates)]


def query_candidates(benchmark: Benchmark, pixel_counts: np.ndarray) -> np.ndarray:
    """Images that contain at least one base or novel class."""
    return np.flatnonzero(pixel_counts[:, 1:benchmark.num_classes + 1].sum(axis=1) > 0)


def _no_candidate(benchmark: Benchmark, fold: int, cls: int, settings: EvaluationSettings) -> GFSSError:
    alone = " and no other novel class" if settings.single_novel_supports else ""
    return GFSSError(
        f"novel class {cls} ({benchmark.class_names[cls - 1]}) of {benchmark.name} fold {fold} has no "
        f"support candidate in the {settings.support_source} split (needs >= {settings.min_support_pixels} "
        f"pixels of it{alone}); check the data, lower --min-support-pixels or change --support-source")


def eligible_queries(benchmark: Benchmark, pixel_counts: np.ndarray, settings: EvaluationSettings,
                     supports: Sequence[Sequence[int]]) -> np.ndarray:
    """A run's query list: the val images with a base or novel pixel, in list order, minus the run's supports when
    they come from val."""
    used = {i for group in supports for i in group} if settings.support_source == "val" else set()
    return np.array([i for i in query_candidates(benchmark, pixel_counts) if i not in used], dtype=np.int64)


def _iterator_permutation(stream: torch.Generator, size: int) -> np.ndarray:
    """What creating an iterator of a shuffled torch DataLoader draws (docs/protocol.md §4a): the workers' base seed,
    then the seed of the sampler's own generator, which gives the permutation of the `size` list positions."""
    torch.empty((), dtype=torch.int64).random_(generator=stream)  # the workers' base seed
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_(generator=stream).item())
    return torch.randperm(size, generator=torch.Generator().manual_seed(sampler_seed)).numpy()


def official_query_runs(query_lists: Sequence[np.ndarray], batch_size: int, test_num: int, seed: int
                        ) -> list[np.ndarray]:
    """Each run's queries, in evaluation order, as the official code takes them from one shuffled DataLoader
    (docs/protocol.md §4a): `test_num // batch_size` batches per run (a short last batch counts as one) from an
    iterator that continues across runs and is re-created, over the query list of the run at hand, when it is
    exhausted. An iterator indexes the list it was created on (its workers' copy), so a run can hold an image twice
    or one of its own supports. `query_lists[r]`: run r's query list; `seed`: the evaluation's torch seed."""
    batches = test_num // batch_size
    if batches < 1:
        raise GFSSError(f"--queries {test_num} is below the official validation batch ({batch_size}): the official "
                        f"sampler takes --queries // {batch_size} batches per run; pass --queries >= {batch_size} "
                        "or --episodes independent")
    stream = torch.Generator().manual_seed(seed)
    snapshot, order, position = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    runs = []
    for current in query_lists:
        taken = []
        for _ in range(batches):
            if position >= order.size:  # StopIteration: a new iterator over this run's list
                snapshot, order, position = np.asarray(current, dtype=np.int64), _iterator_permutation(
                    stream, len(current)), 0
                if order.size == 0:
                    raise GFSSError("a run has no query image (no val image holds a base or novel class besides its "
                                    "supports); check the data")
            taken.append(snapshot[order[position:position + batch_size]])
            position += batch_size
        runs.append(np.concatenate(taken))
    return runs


def _queries(benchmark: Benchmark, seed: int, pixel_counts: np.ndarray, settings: EvaluationSettings,
             per_run: Sequence[Sequence[Sequence[int]]]) -> list[np.ndarray]:
    """The queries of the official sampler's runs: all of each run's list, or with a query cap the official
    DataLoader replay with the benchmark's validation batch."""
    lists = [eligible_queries(benchmark, pixel_counts, settings, supports) for supports in per_run]
    if settings.max_queries is None:
        return lists
    return official_query_runs(lists, benchmark.val_batch_size, settings.max_queries, seed)


def _episode(benchmark: Benchmark, fold: int, shot: int, run: int, seed: int, supports: Sequence[Sequence[int]],
             queries: Sequence[int]) -> Episode:
    return Episode(run, run_seed(seed, benchmark.name, fold, shot, run),
                   tuple(tuple(int(i) for i in group) for group in supports), tuple(int(i) for i in queries))


def _checked(benchmark: Benchmark, shot: int, pixel_counts: np.ndarray, settings: Optional[EvaluationSettings],
             support_pixel_counts: Optional[np.ndarray]) -> tuple[EvaluationSettings, np.ndarray]:
    """The settings (default: the benchmark's) and the pixel counts of the split the supports come from."""
    settings = settings or benchmark.evaluation_settings()
    if shot < 1:
        raise GFSSError(f"--shot must be >= 1, got {shot}")
    if settings.support_source == "val":
        return settings, pixel_counts
    if support_pixel_counts is None:
        raise ValueError("support_source 'train' needs the train split's pixel counts")
    return settings, support_pixel_counts


def make_episode(benchmark: Benchmark, fold: int, shot: int, run: int, seed: int, pixel_counts: np.ndarray,
                 settings: EvaluationSettings | None = None, support_pixel_counts: np.ndarray | None = None
                 ) -> Episode:
    """The `independent` sampler: run `run`'s support set (K per novel class, repeated if fewer exist) from a
    generator seeded by the run's own seed, and its queries.

    `pixel_counts` are those of the val split (the queries). With `settings.support_source == "train"`,
    `support_pixel_counts` are those of the train split and supports are not removed from the queries.
    """
    settings, support_counts = _checked(benchmark, shot, pixel_counts, settings, support_pixel_counts)
    rng = np.random.default_rng(run_seed(seed, benchmark.name, fold, shot, run))
    supports = []
    for cls, candidates in zip(benchmark.novel_classes(fold),
                               support_candidates(benchmark, fold, support_counts, settings)):
        if candidates.size == 0:
            raise _no_candidate(benchmark, fold, cls, settings)
        if candidates.size >= shot:
            chosen = rng.choice(candidates, size=shot, replace=False)
        else:  # docs/protocol.md §4: repeat the found ones
            chosen = np.resize(rng.permutation(candidates), shot)
        supports.append(chosen)
    queries = eligible_queries(benchmark, pixel_counts, settings, supports)
    if benchmark.shuffle_queries:
        queries = rng.permutation(queries)
    return _episode(benchmark, fold, shot, run, seed, supports, queries[:settings.max_queries])


def diam_supports(benchmark: Benchmark, fold: int, shot: int, runs: int, seed: int, pixel_counts: np.ndarray,
                  settings: EvaluationSettings, image_keys: Optional[Sequence[Any]] = None
                  ) -> list[list[list[int]]]:
    """The official support sets of `runs` runs (docs/protocol.md §4a): [run][novel class][shot] image indices.
    A class with f < K usable candidates gets K - f repeats drawn by `random.choices(range(f))` and applied to the
    run's whole list so far (so for a class after the first they are the first class's images).

    `pixel_counts` are those of the support split; `image_keys` identify its images (an image listed twice in the
    list file is one image; default: the index).
    """
    rng = random.Random(seed)
    keys = image_keys if image_keys is not None else range(len(pixel_counts))
    candidates = area_candidates(benchmark, fold, pixel_counts, settings)
    # An image holds several novel classes when its values minus 0, 255 and the base ids are more than one.
    others = np.ones(256, dtype=bool)
    others[[0, 255, *benchmark.base_classes(fold)]] = False
    multi_novel = ((pixel_counts > 0) & others).sum(axis=1) > 1
    per_run = []
    for _ in range(runs):
        supports, gathered = [], []  # gathered: every support image of this run so far, in class order
        for cls, class_candidates in zip(benchmark.novel_classes(fold), candidates):
            order = list(range(len(class_candidates)))
            rng.shuffle(order)
            chosen: list[int] = []
            for position in order:
                if len(chosen) == shot:
                    break
                image = int(class_candidates[position])
                if any(keys[image] == keys[i] for i in chosen) or (settings.single_novel_supports
                                                                   and multi_novel[image]):
                    continue
                chosen.append(image)
            if not chosen:
                raise _no_candidate(benchmark, fold, cls, settings)
            gathered += chosen
            if len(chosen) < shot:  # §4a: indices below the found count, applied to the run's whole list so far
                repeats = [gathered[i] for i in rng.choices(range(len(chosen)), k=shot - len(chosen))]
                chosen += repeats
                gathered += repeats
            supports.append(chosen)
        per_run.append(supports)
    return per_run


def make_episodes(benchmark: Benchmark, fold: int, shot: int, runs: int, seed: int, pixel_counts: np.ndarray,
                  settings: EvaluationSettings | None = None, support_pixel_counts: np.ndarray | None = None,
                  sampler: str = "diam", image_keys: Optional[Sequence[Any]] = None) -> list[Episode]:
    """All `runs` episodes of one (benchmark, fold, shot) evaluation with `sampler` (see the module docstring);
    `image_keys` as in `diam_supports`."""
    if sampler == "independent":
        return [make_episode(benchmark, fold, shot, run, seed, pixel_counts, settings, support_pixel_counts)
                for run in range(runs)]
    if sampler != "diam":
        check_episodes(sampler)
        raise ValueError(f"episodes {sampler!r} come from a file: use EpisodeFile")
    settings, support_counts = _checked(benchmark, shot, pixel_counts, settings, support_pixel_counts)
    per_run = diam_supports(benchmark, fold, shot, runs, seed, support_counts, settings, image_keys)
    queries = _queries(benchmark, seed, pixel_counts, settings, per_run)
    return [_episode(benchmark, fold, shot, run, seed, supports, run_queries)
            for run, (supports, run_queries) in enumerate(zip(per_run, queries))]


def episodes_document(benchmark: Benchmark, fold: int, shot: int, seed: int, sampler: str,
                      episodes: Sequence[Episode], support_names: Sequence[str], query_names: Sequence[str],
                      list_queries: bool) -> dict:
    """One (fold, shot) entry of `gfss-bench episodes --format json`: per run the support image stems of each
    novel class's K slots in order (repeats included), the number of queries (and of distinct ones) and, with
    `list_queries` (a sampled subset), the query stems in evaluation order."""
    names = [benchmark.class_names[c - 1] for c in benchmark.novel_classes(fold)]
    runs = []
    for e in episodes:
        run = {"run": e.run, "supports": {name: [support_names[i] for i in group]
                                          for name, group in zip(names, e.supports)},
               "num_queries": len(e.queries), "distinct_queries": len(set(e.queries))}
        if list_queries:
            run["queries"] = [query_names[i] for i in e.queries]
        runs.append(run)
    return {"benchmark": benchmark.name, "fold": fold, "shot": shot, "seed": seed, "episodes": sampler,
            "runs": runs}


def queries_digest(stems: Sequence[str]) -> str:
    """sha256 prefix of a run's query multiset (its stems sorted, repeats kept): equal digests, same images."""
    return hashlib.sha256("\n".join(sorted(stems)).encode()).hexdigest()[:16]


def file_digest(data: bytes) -> str:
    """The 16-hex-digit sha256 prefix that names an episode file in run specs (`file:<digest>`)."""
    return hashlib.sha256(data).hexdigest()[:16]


class EpisodeFile:
    """Support sets read from a JSON file of `gfss-bench episodes --format json` (for example one published with
    a paper), for `run --episodes FILE`: the runs use exactly its support images."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()
        try:
            data = read_regular(self.path, MAX_EPISODE_FILE_BYTES)
        except OSError as error:
            raise GFSSError(f"--episodes: cannot read {self.path} ({error.strerror or error}); pass diam, "
                            "independent or a file written by `gfss-bench episodes --format json`") from None
        except InputProblem as problem:
            raise self.error(f"{problem}; pass a file written by `gfss-bench episodes --format json`") from None
        self.digest = file_digest(data)
        try:
            entries = parse_json(data)
        except InputProblem as problem:
            raise self.error(str(problem)) from None
        if not isinstance(entries, list) or not all(self._well_formed(e) for e in entries):
            raise self.error('must be a list of {"benchmark", "fold", "shot", "runs": [{"run", "supports": '
                             '{class name: [image stem, ...]}}]} objects, as `gfss-bench episodes --format json` '
                             "writes")
        self.entries = entries

    @property
    def episodes(self) -> str:
        """The RunSpec.episodes of runs that use this file."""
        return FILE_PREFIX + self.digest

    def error(self, message: str) -> GFSSError:
        return GFSSError(f"episode file {self.path} {message}")

    @staticmethod
    def _well_formed(entry: Any) -> bool:
        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        return (isinstance(entry, dict) and isinstance(entry.get("benchmark"), str) and is_int(entry.get("fold"))
                and is_int(entry.get("shot")) and isinstance(entry.get("runs"), list)
                and all(isinstance(run, dict) and is_int(run.get("run")) and isinstance(run.get("supports"), dict)
                        and all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                                for names in [*run["supports"].values(), run.get("queries", [])])
                        for run in entry["runs"]))

    def entry(self, benchmark: Benchmark, fold: int, shot: int, runs: int) -> dict:
        """The file's object for (benchmark, fold, shot), checked against the run count and the fold's classes."""
        if not any(e["benchmark"] == benchmark.name for e in self.entries):
            held = sorted({e["benchmark"] for e in self.entries})
            raise self.error(f"holds episodes of {cut(', '.join(held)) or 'no benchmark'}, not of {benchmark.name}")
        matches = [e for e in self.entries if (e["benchmark"], e["fold"], e["shot"]) == (benchmark.name, fold, shot)]
        if len(matches) != 1:
            held = ", ".join(f"fold {e['fold']} {e['shot']}-shot" for e in self.entries
                             if e["benchmark"] == benchmark.name)
            how = "several entries" if matches else "no entry"
            raise self.error(f"has {how} for {benchmark.name} fold {fold} {shot}-shot (it holds: {cut(held)}); pick "
                             "--fold/--shot accordingly")
        entry = matches[0]
        if [r["run"] for r in entry["runs"]] != list(range(runs)):
            raise self.error(f"holds {len(entry['runs'])} run(s) for {benchmark.name} fold {fold} {shot}-shot, "
                             f"numbered 0.., but --runs is {runs}; pass --runs {len(entry['runs'])}")
        names = [benchmark.class_names[c - 1] for c in benchmark.novel_classes(fold)]
        for run in entry["runs"]:
            if set(run["supports"]) != set(names):
                unknown = sorted(set(run["supports"]) - set(names))
                missing = [n for n in names if n not in run["supports"]]
                raise self.error(f"run {run['run']} of {benchmark.name} fold {fold} {shot}-shot: "
                                 + (f"unknown class name(s) {cut(', '.join(unknown))}" if unknown else
                                    f"no supports for {', '.join(missing)}")
                                 + f"; the novel classes are {', '.join(names)}")
            short = [n for n in names if len(run["supports"][n]) != shot]
            if short:
                raise self.error(f"run {run['run']} of {benchmark.name} fold {fold}: class {cut(short[0])} has "
                                 f"{len(run['supports'][short[0]])} support image(s), not {shot}")
        return entry

    def make_episodes(self, benchmark: Benchmark, fold: int, shot: int, runs: int, seed: int,
                      pixel_counts: np.ndarray, settings: EvaluationSettings, support_names: Sequence[str],
                      query_names: Sequence[str], support_pixel_counts: Optional[np.ndarray] = None
                      ) -> list[Episode]:
        """The file's support sets as episodes (image stems -> indices into the support split). A run's queries are
        the stems it lists (`query_names`: the val split's), else those the official sampler takes with these
        supports. A support image must hold at least one pixel of its class (`pixel_counts` of val, or
        `support_pixel_counts` of train when the supports come from there), unless it repeats an image of an
        earlier class of the run (the official repeats, docs/protocol.md §4a); the file's images are used as they
        are otherwise (no --min-support-pixels)."""
        counts = support_pixel_counts if settings.support_source == "train" else pixel_counts
        entry = self.entry(benchmark, fold, shot, runs)
        per_run = [self._supports(benchmark, fold, run, settings, support_names, counts) for run in entry["runs"]]
        listed = all("queries" in run for run in entry["runs"])
        derived = [None] * len(per_run) if listed else _queries(benchmark, seed, pixel_counts, settings, per_run)
        eligible = set(query_candidates(benchmark, pixel_counts).tolist())
        return [_episode(benchmark, fold, shot, run["run"], seed, supports,
                         self._listed_queries(run, query_names, eligible) if "queries" in run else queries)
                for run, supports, queries in zip(entry["runs"], per_run, derived)]

    def _supports(self, benchmark: Benchmark, fold: int, run: dict, settings: EvaluationSettings,
                  support_names: Sequence[str], counts: Optional[np.ndarray]) -> list[list[int]]:
        """A run's support slots as indices into the support split, checked (see `make_episodes`)."""
        index = _first_index(support_names)
        supports: list[list[int]] = []
        for cls in benchmark.novel_classes(fold):
            name = benchmark.class_names[cls - 1]
            missing = [stem for stem in run["supports"][name] if stem not in index]
            if missing:
                raise self.error(f"lists image {quote(missing[0])} (run {run['run']}, class {name}), which is not "
                                 f"in the {settings.support_source} split of the data; check --data-root and "
                                 "--support-source")
            chosen = [index[stem] for stem in run["supports"][name]]
            earlier = {i for group in supports for i in group}
            empty = [i for i in chosen if counts is not None and counts[i, cls] == 0 and i not in earlier]
            if empty:
                raise self.error(f"lists image {quote(support_names[empty[0]])} as a support of class {name} "
                                 f"(id {cls}, run {run['run']}), but its label holds no pixel of that class; fix "
                                 "the file, or check --data-root and --support-source")
            supports.append(chosen)
        return supports

    def _listed_queries(self, run: dict, query_names: Sequence[str], eligible: set[int]) -> list[int]:
        """A run's listed query stems as val indices; each must be a query candidate."""
        index = _first_index(query_names)
        for stem in run["queries"]:
            if index.get(stem) not in eligible:
                why = "is not in the val split" if stem not in index else "holds no base or novel pixel"
                raise self.error(f"lists query {quote(stem)} (run {run['run']}), which {why}; check --data-root or "
                                 "fix the file")
        return [index[stem] for stem in run["queries"]]


def _first_index(names: Sequence[str]) -> dict[str, int]:
    """name -> the index of its first occurrence."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    return index
