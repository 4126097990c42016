"""The runner that evaluates run specs (`evaluation/spec.py`) on seeded episodes.

Specs that share the data (`RunSpec.data_key`) share one segmenter and one feature source; specs that share an
episode (same shot, seed, run, evaluation settings and sampler) are evaluated together, batch by batch, so every query
batch is decoded and passed through the segmenter once for all methods of an invocation.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from gfss_bench.evaluation.distributed import SINGLE_PROCESS, Workers
from gfss_bench.evaluation.spec import RunSpec, resolve_device
from gfss_bench.data.episodes import (
    FILE_PREFIX, Episode, EpisodeFile, episodes_document, make_episodes, query_candidates, queries_digest)
from gfss_bench.models.features import (
    EXTRACTION_CHUNK, Extractor, FeatureConfig, StoredFeatures, StreamedFeatures, chunked,
    segmenter_fingerprint)
from gfss_bench.metrics import CONVENTIONS, scores
from gfss_bench.scoring import query_confusions, sparse_query_counts
from gfss_bench.data.transforms import PREPROCESSING_VERSION
from gfss_bench.errors import GFSSError
from gfss_bench.methods import Fitted, Method, Task, build_method
from gfss_bench.models.families import SegmenterLoader, as_loaded
from gfss_bench.models.segmenter import input_contract_of
from gfss_bench.progress import progress_bar
from gfss_bench.protocols import Benchmark, EvaluationSettings, get_benchmark, get_protocol
from gfss_bench.results.describe import self_description
from gfss_bench.results.store import ResultStore, split_query_records

def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a result was computed."""
    versions = {"python": platform.python_version()}
    for package in ("gfss-bench", "torch", "torchvision", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "git_commit": commit, "versions": versions, "device": device.type, "device_name": device_name,
        "torch_threads": torch.get_num_threads(), "host": platform.node(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": sys.argv,
    }


@dataclass
class EvaluationData:
    """What every spec of one data key shares: the segmenter's classifier, the splits and their features."""

    benchmark: Benchmark
    base_weight: torch.Tensor
    base_bias: torch.Tensor
    pixel_counts: np.ndarray  # val split, [images, 256]
    queries: Any  # StoredFeatures or StreamedFeatures of the val split
    names: list[str]  # val image names
    supports: Any  # the feature source of the support split (`queries` when supports come from val)
    support_pixel_counts: Optional[np.ndarray] = None  # train split, when supports come from it
    support_names_list: Optional[list[str]] = None
    skipped_images: list[dict] = dataclasses.field(default_factory=list)  # with --skip-bad-images
    segmenter_source: Optional[dict] = None  # e.g. the checkpoint file a `checkpoint:<sha>` segmenter came from
    feature_storage: str = "memory"  # memory, disk or streamed
    episode_file: Optional[EpisodeFile] = None  # the support sets of specs with episodes "file:<digest>"
    segmenter_label: Optional[str] = None  # the user's choice over all folds (`SegmenterFamily.label`)
    _episodes: dict = dataclasses.field(default_factory=dict, repr=False)

    def support_names(self, episode: Episode) -> list[list[str]]:
        """The image names of an episode's support set, as stored in results and checkpoints."""
        names = self.support_names_list or self.names
        return [[names[i] for i in group] for group in episode.supports]

    def episodes(self, spec: RunSpec) -> list[Episode]:
        """The `spec.runs` episodes of the spec's evaluation, made at once (the official sampler's run r continues
        the stream of runs < r) and kept for the other specs that share them."""
        key = (spec.fold, spec.shot, spec.seed, spec.evaluation, spec.episodes)
        if len(self._episodes.get(key, ())) < spec.runs:
            names = self.support_names_list or self.names
            if spec.episodes.startswith(FILE_PREFIX):
                if self.episode_file is None or self.episode_file.episodes != spec.episodes:
                    raise GFSSError(f"this run spec uses the support sets of an episode file ({spec.episodes}): "
                                    "pass that file with --episodes FILE")
                made = self.episode_file.make_episodes(self.benchmark, spec.fold, spec.shot, spec.runs, spec.seed,
                                                       self.pixel_counts, spec.evaluation, names, self.names,
                                                       self.support_pixel_counts)
            else:
                made = make_episodes(self.benchmark, spec.fold, spec.shot, spec.runs, spec.seed, self.pixel_counts,
                                     spec.evaluation, self.support_pixel_counts, spec.episodes, names)
            self._episodes[key] = made
        return self._episodes[key][:spec.runs]


def _open_checked_split(benchmark: Benchmark, split_name: str, data_root: Optional[Path], skip_bad_images: bool,
                        log: Callable[[str], None]):
    """The split with its pixel counts, bad items left out (and listed) with `skip_bad_images`."""
    from gfss_bench.data.datasets import open_split

    split = open_split(benchmark, split_name, data_root)
    skipped = []
    if skip_bad_images:
        bad = split.find_bad_items()
        if bad:
            skipped = [{"name": split.names[i], "image": str(split.items[i][0]), "label": str(split.items[i][1]),
                        "reason": reason} for i, reason in bad]
            log(f"warning: skipped {len(bad)} bad image(s) of {split.list_file} (--skip-bad-images): "
                + ", ".join(item["name"] for item in skipped[:10]) + (" ..." if len(bad) > 10 else ""))
            split = split.without([i for i, _ in bad])
    pixel_counts = split.class_pixel_counts()
    unknown = np.flatnonzero(pixel_counts[:, benchmark.num_classes + 1:255].sum(axis=0)) + benchmark.num_classes + 1
    if unknown.size:
        image = int(np.flatnonzero(pixel_counts[:, unknown[0]])[0])
        raise GFSSError(f"label {split.items[image][1]} (listed in {split.list_file}) contains class id "
                        f"{unknown[0]}, outside {benchmark.name}'s 0..{benchmark.num_classes} and 255 (void); fix "
                        "the label file or pick the benchmark that matches the data")
    return split, pixel_counts, skipped


def list_episodes(benchmark: Benchmark, folds: Iterable[int], shots: Iterable[int], runs: int, seed: int,
                  episodes: str, settings: EvaluationSettings, data_root: Optional[Path] = None,
                  skip_bad_images: bool = False, log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """The support sets `run` would use, without any model: one `episodes_document` per (fold, shot)."""
    split, pixel_counts, _ = _open_checked_split(benchmark, "val", data_root, skip_bad_images, log)
    support_counts, names, query_names = None, split.names, list(split.names)
    if settings.support_source == "train":
        support_split, support_counts, _ = _open_checked_split(benchmark, "train", data_root, skip_bad_images, log)
        names = support_split.names
    documents = []
    for fold in folds:
        for shot in shots:
            made = make_episodes(benchmark, fold, shot, runs, seed, pixel_counts, settings, support_counts, episodes,
                                 names)
            documents.append(episodes_document(benchmark, fold, shot, seed, episodes, made, names, query_names,
                                               settings.max_queries is not None))
    return documents


def _feature_bytes(num_images: int, feature_shape: tuple[int, ...]) -> int:
    """float32 bytes of `num_images` feature maps of one image's measured shape (C, h, w)."""
    return num_images * int(np.prod(feature_shape)) * 4


def _load_evaluation_data(spec: RunSpec, device: torch.device, segmenter_loader: Callable,
                          data_root: Optional[Path], skip_bad_images: bool, features: FeatureConfig,
                          workers: Workers, log: Callable[[str], None]) -> EvaluationData:
    benchmark, settings = get_benchmark(spec.benchmark), spec.evaluation
    split, pixel_counts, skipped = _open_checked_split(benchmark, "val", data_root, skip_bad_images, log)
    support_split = support_counts = None
    if settings.support_source == "train":
        support_split, support_counts, skipped_train = _open_checked_split(benchmark, "train", data_root,
                                                                           skip_bad_images, log)
        skipped += skipped_train
    loaded = as_loaded(segmenter_loader(spec, device))
    segmenter = loaded.segmenter
    weight, bias = segmenter.classifier_weight_and_bias()
    expected = len(benchmark.base_classes(spec.fold)) + 1
    if weight.shape[1] != expected:
        raise GFSSError(f"segmenter {spec.segmenter!r} has {weight.shape[1]} classifier outputs but "
                        f"{benchmark.name} fold {spec.fold} needs {expected} (background + base)")
    loader_workers = features.workers_for(device)
    extractor = Extractor(segmenter, split, settings.image_size, device, spec.feature_precision, loader_workers)
    candidates = query_candidates(benchmark, pixel_counts)
    if spec.feature_cache and features.cache_dir is None:
        raise GFSSError("this run spec uses the on-disk feature cache: pass --feature-cache DIR")
    contract = input_contract_of(segmenter)
    contract.padded_side(settings.image_size, f"segmenter {loaded.label or spec.segmenter}")
    needed = _feature_bytes(len(candidates), extractor.feature_shape())
    memory_fits = needed <= features.memory_limit_bytes()
    if spec.feature_cache or memory_fits:
        description = None
        if spec.feature_cache:
            description = {"segmenter": segmenter_fingerprint(segmenter), "list": split.cache_key(),
                           "image_size": settings.image_size, "preprocessing": PREPROCESSING_VERSION,
                           "precision": spec.feature_precision,
                           "device": device.type}
            if not contract.is_imagenet:
                description["normalisation"] = [list(contract.mean), list(contract.std)]
        queries = StoredFeatures(extractor, candidates, features.cache_dir if spec.feature_cache else None,
                                 description)
        _fill(queries, workers, spec, log)
        storage = "disk" if spec.feature_cache else "memory"
    else:
        queries, storage = StreamedFeatures(extractor), "streamed"
        log(f"{benchmark.name}: the features of {len(candidates)} images ({needed / 2 ** 30:.1f} GiB) exceed "
            f"--feature-memory ({features.memory_limit_bytes() / 2 ** 30:.1f} GiB): streaming them batch by batch, "
            "once per run (pass --feature-cache DIR to extract them once, on disk)")
    supports = queries
    if support_split is not None:
        supports = StreamedFeatures(Extractor(segmenter, support_split, settings.image_size, device,
                                              spec.feature_precision, loader_workers))
    return EvaluationData(benchmark, weight.detach().float().cpu(), bias.detach().float().cpu(), pixel_counts,
                          queries, list(split.names), supports, support_counts,
                          list(support_split.names) if support_split is not None else None, skipped,
                          loaded.source, storage, segmenter_label=loaded.label)


def _fill(store: StoredFeatures, workers: Workers, spec: RunSpec, log: Callable[[str], None]) -> None:
    """Extract the stored candidates' features. In memory every rank extracts all of them; on disk each rank
    fills its share of the chunks and waits for the others."""
    missing = store.missing_chunks()
    mine = workers.shard(missing) if store.on_disk else missing
    if store.on_disk and len(missing) < len(store.chunks):
        log(f"feature cache {store.arrays.folder}: {len(store.chunks) - len(missing)} of {len(store.chunks)} "
            "chunks already stored")
    with progress_bar(enabled=workers.is_main) as progress:
        bar = progress.add_task(f"{spec.benchmark} fold {spec.fold}: features",
                                total=sum(len(store.chunks[c]) for c in mine))
        store.fill(mine, on_chunk=lambda n: progress.advance(bar, n))
    workers.barrier()
    if store.missing_chunks():
        raise GFSSError(f"the feature cache {store.arrays.folder} is still incomplete after filling it (another "
                        "process may have been interrupted); rerun the command")


class NonFiniteOutput(GFSSError):
    """A method returned NaN/inf: the spec is abandoned and nothing of it is kept."""


@dataclass
class _SpecState:
    """A spec being evaluated: its method, completed runs and the time its method took."""

    spec: RunSpec
    method: Method
    runs: list[dict]
    resumed: int
    method_seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return len(self.runs) >= self.spec.runs


def _support_task(data: EvaluationData, spec: RunSpec, episode: Episode, device: torch.device) -> Task:
    """A task holding the episode's support set only (what `Method.fit` sees)."""
    benchmark, protocol = data.benchmark, get_protocol(spec.protocol)
    support_lut = torch.from_numpy(protocol.support_label_lut(benchmark, spec.fold).astype(np.int64))
    flat = [i for group in episode.supports for i in group]
    parts = list(data.supports.batches(chunked(flat, EXTRACTION_CHUNK)))
    features = torch.cat([f for f, _ in parts]).to(device)
    labels = support_lut[torch.cat([l for _, l in parts]).long()]
    n, k = len(episode.supports), spec.shot
    channels = features.shape[1]
    return Task(base_weight=data.base_weight.to(device), base_bias=data.base_bias.to(device),
                support_features=features.reshape(n, k, *features.shape[1:]),
                support_labels=labels.reshape(n, k, *labels.shape[1:]).to(device),
                query_features=features.new_zeros((0, channels, *features.shape[2:])),
                query_valid=torch.zeros((0, *labels.shape[1:]), dtype=torch.bool, device=device),
                query_labels=None, seed=episode.seed, evaluation_seed=spec.seed,
                segmenter=data.segmenter_label or spec.segmenter)


def query_seeds(run_seed: int, val_indices: Iterable[int]) -> torch.Tensor:
    """int64 [Q]: the seed of each query image, from the run's seed and the image's index in the val list
    (32-bit, as torch's CPU generator reads only the low 32 bits), so a method's per-query draws do not depend on
    the batch size, the query order or the number of processes."""
    return torch.tensor([zlib.crc32(f"{run_seed}/query/{int(i)}".encode()) for i in val_indices], dtype=torch.int64)


def _evaluate_episode(states: list[_SpecState], data: EvaluationData, episode: Episode, device: torch.device,
                      batch_size: int, workers: Workers, on_batch: Callable[[int], None],
                      on_phase: Callable[[str], None] = lambda phase: None
                      ) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Confusion matrices of every state's method on one episode (summed over all ranks), and each method's
    per-query records (`query_record`, in query order, gathered from all ranks).

    Each method is fitted once on the support set; then every query batch of this rank is extracted once and
    predicted by every method.
    """
    benchmark, spec0 = data.benchmark, states[0].spec
    num_classes = len(benchmark.episode_classes(spec0.fold))
    query_lut = torch.from_numpy(benchmark.episode_label_lut(spec0.fold).astype(np.int64))
    on_phase("support features")
    support_task = _support_task(data, spec0, episode, device)
    fitted: list[Fitted] = []
    for state in states:
        on_phase(f"fit {state.spec.method}")
        started = time.perf_counter()
        fitted.append(state.method.fit(support_task))
        state.method_seconds += time.perf_counter() - started
    confusions = [torch.zeros(num_classes, num_classes, dtype=torch.int64) for _ in states]
    records: list[list[tuple[int, list[dict]]]] = [[] for _ in states]  # per state: (batch number, its records)
    on_phase("predict")
    local = workers.shard(list(enumerate(chunked(list(episode.queries), batch_size))))
    for (number, batch), (query_features, query_labels) in zip(local, data.queries.batches([b for _, b in local])):
        query_labels = query_lut[query_labels.long()].to(device)
        valid = query_labels != 255
        seeds = query_seeds(episode.seed, batch)
        for state, fit, confusion, kept in zip(states, fitted, confusions, records):
            started = time.perf_counter()
            task = dataclasses.replace(support_task, query_features=query_features, query_valid=valid,
                                       query_labels=query_labels if state.method.is_oracle else None,
                                       query_seeds=seeds)
            probs = fit.predict(task)
            if not torch.isfinite(probs).all():
                start = number * batch_size
                raise NonFiniteOutput(
                    f"method {state.spec.method!r} produced NaN/inf probabilities on {benchmark.name} fold "
                    f"{state.spec.fold} run {episode.run} (episode seed {episode.seed}, queries "
                    f"{start}..{start + len(batch) - 1}); nothing was stored; try a smaller learning rate")
            per_query = query_confusions(probs.float(), query_labels, num_classes)
            confusion += per_query.sum(0)
            kept.append((number, [query_record(data.names[i], c) for i, c in zip(batch, per_query)]))
            state.method_seconds += time.perf_counter() - started
        on_batch(len(batch) * len(states))
    summed = workers.sum(torch.stack(confusions))
    gathered = [sorted(sum(workers.gather(kept), []), key=lambda item: item[0]) for kept in records]
    return list(summed), [[record for _, batch in kept for record in batch] for kept in gathered]


def query_record(name: str, confusion: torch.Tensor) -> dict:
    """One query's stored counts: its image name and the intersection and union of each class present in its
    ground truth or prediction (`scoring.sparse_query_counts`)."""
    classes, intersection, union = sparse_query_counts(confusion)
    return {"query": name, "classes": classes, "intersection": intersection, "union": union}


def _aggregate(per_run: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in per_run[0]:
        values = np.array([r[key] for r in per_run], dtype=np.float64)
        if np.isnan(values).all():
            out[key] = {"mean": float("nan"), "std": float("nan")}
        else:
            out[key] = {"mean": float(np.nanmean(values)),
                        "std": float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0}
    return out


def execute(specs: Iterable[RunSpec], store: ResultStore, *, batch_size: Optional[int] = None, force: bool = False,
            segmenter_loader: Optional[Callable] = None, data_root: Optional[Path] = None,
            log: Callable[[str], None] = lambda message: None, skip_bad_images: bool = False,
            features: FeatureConfig = FeatureConfig(), workers: Workers = SINGLE_PROCESS,
            episode_file: Optional[Path] = None) -> list[dict]:
    """Evaluate every spec not yet stored (or all with `force`); return the results of all specs.

    Progress is checkpointed per run in `<run_id>.partial.json` (see `ResultStore.save_partial`): a spec
    interrupted after some runs resumes at its first missing run. A spec that another process stored in
    the meantime (up to the end of its data key's setup) is loaded instead of being recomputed. A damaged
    stored result counts as absent: it is renamed aside (`ResultStore.set_aside`, with a warning naming it)
    and the spec recomputed. Before anything is computed, the results folder must accept a probe file. With
    `skip_bad_images`, unreadable or too large images and labels (or image/label size mismatches) are left
    out with a warning and listed in the result's
    `skipped_images`; the run id does not change (see README, "Long sweeps"). Under torchrun (`workers`),
    every rank computes its share of the query batches; rank 0 alone reads checkpoints and writes results.
    `segmenter_loader(spec, device)` builds a data key's segmenter; the default, a `families.SegmenterLoader` with
    nothing registered, builds the built-in ones (run ids naming other weights need the loader they were added to).
    Specs with episodes `file:<digest>` take their support sets from `episode_file`, whose digest must match.
    """
    specs = list(dict.fromkeys(specs))
    segmenter_loader = segmenter_loader or SegmenterLoader()  # builds each spec's segmenter through its family
    episodes = _episode_file(specs, episode_file)
    results: dict[str, dict] = {}
    if not workers.is_main:
        log = lambda message: None  # noqa: E731 - only rank 0 reports

    def load_stored(pending: list[RunSpec]) -> list[RunSpec]:
        """Take the stored results (unless `force`); return the specs still to compute. Decided by rank 0. A damaged
        stored result counts as absent: it is renamed aside (`ResultStore.set_aside`) and the spec computed."""
        stored = {}
        if workers.is_main and not force:
            for spec in pending:
                path = store.path_for(spec.run_id)
                if not os.path.lexists(path):
                    continue
                try:
                    stored[spec.run_id] = store.load(path, spec.run_id)
                except ValueError as error:
                    aside = store.set_aside(path)
                    kept = f"renamed it to {aside.name}" if aside else "it could not be renamed"
                    log(f"warning: the stored result {path} is damaged ({error}); {kept} and computing "
                        f"{spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot again")
                    continue
                log(f"cached: {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot ({spec.run_id})")
        results.update(workers.agree(stored))
        return [spec for spec in pending if spec.run_id not in results]

    pending = load_stored(specs)
    if pending:  # before any feature is extracted: results that could not be stored would be lost
        problem = None
        if workers.is_main:
            try:
                store.check_writable()
            except GFSSError as error:
                problem = str(error)
        problem = workers.agree(problem)
        if problem:
            raise GFSSError(problem)
    groups: dict[tuple, list[RunSpec]] = defaultdict(list)
    for spec in pending:
        groups[spec.data_key].append(spec)
    for group in groups.values():
        device = resolve_device(group[0].device)
        group_batch_size = batch_size if batch_size is not None else get_benchmark(group[0].benchmark).batch_size
        started = time.perf_counter()
        data = _load_evaluation_data(group[0], device, segmenter_loader, data_root, skip_bad_images, features,
                                     workers, log)
        data.episode_file = episodes
        shared_seconds = time.perf_counter() - started
        group = load_stored(group)  # stored by a concurrent process meanwhile
        if not group:  # every spec of this data key was stored meanwhile: nothing left to evaluate
            continue
        if force and workers.is_main:
            for spec in group:
                store.remove_partial(spec.run_id)
        try:
            for result in _evaluate_group(group, data, device, group_batch_size, store, workers, log):
                result["provenance"]["shared_setup_s"] = shared_seconds
                spec = next(s for s in group if s.run_id == result["run_id"])
                if workers.is_main:
                    store.save(result)
                    store.remove_partial(spec.run_id)
                    log(f"stored: {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot -> "
                        f"{store.path_for(spec.run_id)}")
                results[spec.run_id] = split_query_records(result)[0]  # the records stay in the sidecar file
        except NonFiniteOutput:
            if workers.is_main:
                for spec in group:
                    if spec.run_id not in results:
                        store.remove_partial(spec.run_id)  # store nothing of a diverged spec
            raise
    return [results[spec.run_id] for spec in specs]


def _episode_file(specs: list[RunSpec], path: Optional[Path]) -> Optional[EpisodeFile]:
    """The episode file of the specs with episodes `file:<digest>`, checked against every such spec up front."""
    wanted = sorted({spec.episodes for spec in specs if spec.episodes.startswith(FILE_PREFIX)})
    if not wanted:
        return None
    if path is None:
        raise GFSSError(f"these run specs use the support sets of an episode file ({', '.join(wanted)}): pass that "
                        "file with --episodes FILE")
    episodes = EpisodeFile(path)
    if wanted != [episodes.episodes]:
        raise episodes.error(f"has digest {episodes.digest}, but the run specs use {', '.join(wanted)}; pass the "
                             "file they were made with (a changed file gives new run specs)")
    for spec in specs:
        if spec.episodes == episodes.episodes:
            episodes.entry(get_benchmark(spec.benchmark), spec.fold, spec.shot, spec.runs)
    return episodes


def _stream_state(method) -> Any:
    """`Method.stream_state`, or None for a duck-typed method (a plugin) that keeps no stream across runs."""
    return method.stream_state() if hasattr(method, "stream_state") else None


def _restore_stream(method, stream: Any) -> None:
    """`Method.restore_stream_state`; a duck-typed method without it can only resume from no stream."""
    if hasattr(method, "restore_stream_state"):
        method.restore_stream_state(stream)
    elif stream is not None:
        raise ValueError("this method keeps no random stream")


def _resumable_runs(store: ResultStore, spec: RunSpec, data: EvaluationData, log: Callable[[str], None]
                    ) -> tuple[list[dict], Any]:
    """The completed runs of an interrupted evaluation of `spec`, when its checkpoint matches exactly, and the
    method's random stream after them (`Method.stream_state`)."""
    partial = store.load_partial(spec.run_id)
    if partial is None:
        return [], None
    runs, stream = partial.get("runs"), partial.get("method_stream")
    try:
        _restore_stream(spec.build(), stream)
        stream_ok = True
    except ValueError:
        stream_ok = False
    ok = (stream_ok and partial.get("spec") == spec.to_dict() and partial.get("skipped_images") == data.skipped_images
          and isinstance(runs, list) and len(runs) < spec.runs and all(isinstance(run, dict) for run in runs))
    if ok:
        for run in runs:
            index = run.get("run")
            episode = data.episodes(spec)[index] if isinstance(index, int) and 0 <= index < spec.runs else None
            recorded = query_multiset(data, episode) if episode is not None else {}
            ok = ok and episode is not None and (run.get("seed") == episode.seed
                                                 and all(run.get(k) == v for k, v in recorded.items())
                                                 and run.get("support_images") == data.support_names(episode))
        ok = ok and [run["run"] for run in runs] == list(range(len(runs)))
    if not ok:
        log(f"ignoring the checkpoint {store.partial_path_for(spec.run_id)}: it does not match the data or spec")
        return [], None
    log(f"resuming {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot at run {len(runs)} "
        f"({len(runs)} of {spec.runs} runs checkpointed)")
    return runs, stream


def query_multiset(data: EvaluationData, episode: Episode) -> dict:
    """What a run's result records of its queries: their number, how many are distinct and the digest of their
    multiset (`queries_digest`), so two results can be checked to score the same images."""
    return {"num_queries": len(episode.queries), "distinct_queries": len(set(episode.queries)),
            "queries_digest": queries_digest([data.names[i] for i in episode.queries])}


def _evaluate_group(group: list[RunSpec], data: EvaluationData, device: torch.device, batch_size: int,
                    store: ResultStore, workers: Workers, log: Callable[[str], None]) -> Iterable[dict]:
    """Evaluate the specs of one data key run by run; yield each spec's result when its last run is done."""
    benchmark = data.benchmark
    resumed = workers.agree({spec.run_id: _resumable_runs(store, spec, data, log) for spec in group}
                            if workers.is_main else None)
    states = []
    for spec in group:
        runs, stream = resumed[spec.run_id]
        method = spec.build()
        _restore_stream(method, stream)  # the random stream after the checkpointed runs
        states.append(_SpecState(spec, method, list(runs), len(runs)))
    plan: list[tuple[Episode, list[_SpecState]]] = []
    for run in range(max(spec.runs for spec in group)):
        shared: dict[tuple, list[_SpecState]] = defaultdict(list)
        for state in states:
            if len(state.runs) <= run < state.spec.runs:
                shared[state.spec.episode_key(run)].append(state)
        plan += [(data.episodes(members[0].spec)[run], members) for members in shared.values()]
    total = sum(len(workers.shard(list(episode.queries))) * len(members) for episode, members in plan)
    methods = ", ".join(dict.fromkeys(spec.method for spec in group))
    started = time.perf_counter()
    with progress_bar(enabled=workers.is_main) as progress:
        title = f"{methods} on {benchmark.name} fold {group[0].fold}"
        bar = progress.add_task(title, total=total, runs_done=0, runs_total=len(plan))
        for done, (episode, members) in enumerate(plan):
            where = f"{title}, run {episode.run + 1}/{members[0].spec.runs}, {members[0].spec.shot}-shot"
            progress.update(bar, runs_done=done, description=where)
            confusions, queries = _evaluate_episode(
                members, data, episode, device, batch_size, workers, on_batch=lambda n: progress.advance(bar, n),
                on_phase=lambda phase, where=where: progress.update(bar, description=f"{where}: {phase}"))
            for state, confusion, records in zip(members, confusions, queries):
                spec = state.spec
                state.runs.append({
                    "run": episode.run, "seed": episode.seed, **query_multiset(data, episode),
                    "support_images": data.support_names(episode), "confusion": confusion.tolist(),
                    "scores": scores(confusion.numpy(), len(benchmark.base_classes(spec.fold)),
                                     spec.convention).as_dict(),
                    "queries": records,  # moved to the result's sidecar file when it is stored (results/store.py)
                })
                if not state.finished and workers.is_main:
                    store.save_partial(spec.run_id, spec.to_dict(), state.runs,
                                       {"skipped_images": data.skipped_images,
                                        "method_stream": _stream_state(state.method)})
                if state.finished:
                    yield _result_record(state, data, device, workers, time.perf_counter() - started)


def _result_record(state: _SpecState, data: EvaluationData, device: torch.device, workers: Workers,
                   group_seconds: float) -> dict:
    spec, benchmark = state.spec, data.benchmark
    record = provenance(device)
    record.update({"wall_time_s": group_seconds, "method_time_s": state.method_seconds,
                   "resumed_runs": state.resumed, "world_size": workers.world_size,
                   "feature_storage": data.feature_storage})
    if data.segmenter_source is not None:
        record["segmenter_source"] = data.segmenter_source
    return {
        "run_id": spec.run_id, "spec": spec.to_dict(), "oracle": state.method.is_oracle,
        "convention": spec.convention, "convention_description": CONVENTIONS[spec.convention],
        "class_ids": list(benchmark.episode_classes(spec.fold)),
        "class_names": list(benchmark.episode_class_names(spec.fold)),
        "num_base": len(benchmark.base_classes(spec.fold)), "num_novel": len(benchmark.novel_classes(spec.fold)),
        "runs": state.runs, "aggregate": _aggregate([r["scores"] for r in state.runs]), "provenance": record,
        "skipped_images": data.skipped_images,
        "segmenter_label": data.segmenter_label or spec.segmenter,  # a report row's segmenter (describe.py)
        **self_description(spec.method, dict(spec.method_options), build_method(spec.method).options(), benchmark),
    }
