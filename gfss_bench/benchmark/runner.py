"""Run specs, their ids, and the runner that evaluates methods on seeded episodes.

A `RunSpec` (method + options, benchmark, fold, protocol, shot, runs, seed, convention, segmenter,
device) hashes to a run id, which is the cache key and the result file name. Specs that share the
data (benchmark, fold, protocol, segmenter, device) share one feature extraction and the same
episodes, whatever the method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gfss_bench.benchmark.episodes import Episode, make_episode, query_candidates
from gfss_bench.benchmark.features import SplitFeatures, extract_features
from gfss_bench.benchmark.metrics import CONVENTIONS, confusion_matrix, scores
from gfss_bench.errors import GFSSError
from gfss_bench.methods import Method, Task, build_method
from gfss_bench.progress import progress_bar
from gfss_bench.protocols import Benchmark, get_benchmark, get_protocol
from gfss_bench.results.store import ResultStore, canonical_json

DEFAULT_SEED = 2023
DEFAULT_RUNS = 5
BUILTIN_SEGMENTER = "builtin"


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a result; its canonical-JSON hash is the run id."""

    method: str
    method_options: tuple[tuple[str, Any], ...]
    benchmark: str
    fold: int
    protocol: str
    shot: int
    runs: int = DEFAULT_RUNS
    seed: int = DEFAULT_SEED
    convention: str = "diam"
    segmenter: str = BUILTIN_SEGMENTER
    device: str = "cpu"

    @classmethod
    def create(cls, method: str, benchmark: str, fold: int, protocol: str, shot: int,
               options: Optional[dict[str, Any]] = None, **kwargs: Any) -> "RunSpec":
        """Validate every field and fill the method's full option set (defaults included)."""
        built = build_method(method, **(options or {}))
        get_benchmark(benchmark).check_fold(fold)
        get_protocol(protocol)
        if shot < 1:
            raise GFSSError(f"--shot must be >= 1, got {shot}")
        spec = cls(method, _freeze(built.options()), benchmark, fold, protocol, shot, **kwargs)
        if spec.runs < 1:
            raise GFSSError(f"--runs must be >= 1, got {spec.runs}")
        if spec.convention not in CONVENTIONS:
            raise GFSSError(f"--convention {spec.convention!r} is unknown; choose from: {', '.join(CONVENTIONS)}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["method_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.method_options}
        return data

    @property
    def run_id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]

    def build(self) -> Method:
        return build_method(self.method, **dict(self.method_options))

    @property
    def data_key(self) -> tuple:
        return (self.benchmark, self.fold, self.protocol, self.segmenter, self.device)


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GFSSError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise GFSSError(f"--device {name!r} is unknown; choose from: auto, cpu, cuda")
    return torch.device(name)


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
    """What every spec of one data key shares: the segmenter's classifier, features and episodes."""

    benchmark: Benchmark
    base_weight: torch.Tensor
    base_bias: torch.Tensor
    pixel_counts: np.ndarray
    features: SplitFeatures
    names: list[str]
    skipped_images: list[dict] = dataclasses.field(default_factory=list)  # with --skip-bad-images
    segmenter_source: Optional[dict] = None  # e.g. the checkpoint file a `checkpoint:<sha>` segmenter came from

    def support_names(self, episode: Episode) -> list[list[str]]:
        """The image names of an episode's support set, as stored in results and checkpoints."""
        return [[self.names[i] for i in group] for group in episode.supports]


def _load_evaluation_data(spec: RunSpec, device: torch.device, batch_size: int,
                          segmenter_loader: Callable, data_root: Optional[Path], skip_bad_images: bool = False,
                          log: Callable[[str], None] = lambda message: None) -> EvaluationData:
    from gfss_bench.benchmark.datasets import open_split

    benchmark = get_benchmark(spec.benchmark)
    split = open_split(benchmark, "val", data_root)
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
    segmenter = segmenter_loader(spec, device)
    weight, bias = segmenter.classifier_weight_and_bias()
    expected = len(benchmark.base_classes(spec.fold)) + 1
    if weight.shape[1] != expected:
        raise GFSSError(f"segmenter {spec.segmenter!r} has {weight.shape[1]} classifier outputs but "
                        f"{benchmark.name} fold {spec.fold} needs {expected} (background + base)")
    features = extract_features(segmenter, split, query_candidates(benchmark, pixel_counts), benchmark.image_size,
                                device, batch_size=batch_size,
                                description=f"{benchmark.name} fold {spec.fold}: features")
    return EvaluationData(benchmark, weight.detach().float().cpu(), bias.detach().float().cpu(), pixel_counts,
                          features, list(split.names), skipped, getattr(segmenter, "checkpoint_source", None))


def builtin_segmenter_loader(spec: RunSpec, device: torch.device):
    from gfss_bench.models import builtin_segmenter

    if spec.segmenter != BUILTIN_SEGMENTER:
        raise GFSSError(f"segmenter {spec.segmenter!r} is not available; only the built-in ones are")
    return builtin_segmenter(spec.benchmark, spec.fold, spec.protocol, device=device)


def score_probabilities(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 16
                        ) -> torch.Tensor:
    """Upsample [Q, K, h, w] probabilities bilinearly (align_corners=True) to the label size, argmax, count.

    Probabilities already at the label size (methods that decide at label resolution) are used as they are.
    """
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    at_label_size = tuple(probs.shape[-2:]) == tuple(labels.shape[-2:])
    for start in range(0, probs.shape[0], chunk):
        upsampled = probs[start:start + chunk]
        if not at_label_size:
            upsampled = F.interpolate(upsampled, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        confusion += confusion_matrix(upsampled.argmax(1), labels[start:start + chunk], num_classes)
    return confusion


def evaluate_episode(method: Method, data: EvaluationData, spec: RunSpec, episode: Episode,
                     device: torch.device, batch_size: int, on_batch: Callable[[int], None] = lambda n: None
                     ) -> torch.Tensor:
    """The confusion matrix of one method on one episode: the method is fitted once on the episode's
    support set (a task without queries), then predicts the queries batch by batch."""
    benchmark, protocol = data.benchmark, get_protocol(spec.protocol)
    num_classes = len(benchmark.episode_classes(spec.fold))
    query_lut = torch.from_numpy(benchmark.episode_label_lut(spec.fold).astype(np.int64))
    support_lut = torch.from_numpy(protocol.support_label_lut(benchmark, spec.fold).astype(np.int64))
    flat = [i for group in episode.supports for i in group]
    support_features, support_labels = data.features.select(flat)
    n, k = len(episode.supports), spec.shot
    support_features = support_features.reshape(n, k, *support_features.shape[1:]).to(device)
    support_labels = support_lut[support_labels.long()].reshape(n, k, *support_labels.shape[1:]).to(device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    fitted = None
    for start in range(0, len(episode.queries), batch_size):
        batch = episode.queries[start:start + batch_size]
        query_features, query_labels = data.features.select(batch)
        query_labels = query_lut[query_labels.long()]
        task = Task(base_weight=data.base_weight.to(device), base_bias=data.base_bias.to(device),
                    support_features=support_features, support_labels=support_labels,
                    query_features=query_features.to(device), query_valid=(query_labels != 255).to(device),
                    query_labels=query_labels.to(device) if method.is_oracle else None, seed=episode.seed)
        if fitted is None:
            fitted = method.fit(dataclasses.replace(task, query_features=task.query_features[:0],
                                                    query_valid=task.query_valid[:0], query_labels=None))
        probs = fitted.predict(task)
        if not torch.isfinite(probs).all():
            raise NonFiniteOutput(f"method {spec.method!r} produced NaN/inf probabilities on {benchmark.name} fold "
                                  f"{spec.fold} run {episode.run} (episode seed {episode.seed}, queries "
                                  f"{start}..{start + len(batch) - 1}); nothing was stored; try a smaller "
                                  "learning rate")
        confusion += score_probabilities(probs.float().cpu(), query_labels, num_classes)
        on_batch(len(batch))
    return confusion


class NonFiniteOutput(GFSSError):
    """A method returned NaN/inf: the spec is abandoned and nothing of it is kept."""


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
            segmenter_loader: Callable = builtin_segmenter_loader, data_root: Optional[Path] = None,
            log: Callable[[str], None] = lambda message: None, skip_bad_images: bool = False) -> list[dict]:
    """Evaluate every spec not yet stored (or all with `force`); return the results of all specs.

    Progress is checkpointed per run in `<run_id>.partial.json` (see `ResultStore.save_partial`): a spec
    interrupted after some runs resumes at its first missing run. A spec that another process stored in
    the meantime is loaded instead of being recomputed. With `skip_bad_images`, unreadable images and
    labels (or image/label size mismatches) are left out with a warning and listed in the result's
    `skipped_images`; the run id does not change (see README, "Long sweeps").
    """
    specs = list(dict.fromkeys(specs))
    results: dict[str, dict] = {}

    def load_stored(spec: RunSpec) -> bool:
        """Take the stored result of `spec` when there is one (and `force` is off)."""
        if force or not store.contains(spec.run_id):
            return False
        results[spec.run_id] = store.load(store.path_for(spec.run_id))
        log(f"cached: {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot ({spec.run_id})")
        return True

    pending = [spec for spec in specs if not load_stored(spec)]
    groups: dict[tuple, list[RunSpec]] = defaultdict(list)
    for spec in pending:
        groups[spec.data_key].append(spec)
    for group in groups.values():
        device = resolve_device(group[0].device)
        group_batch_size = batch_size if batch_size is not None else get_benchmark(group[0].benchmark).batch_size
        started = time.perf_counter()
        data = _load_evaluation_data(group[0], device, group_batch_size, segmenter_loader, data_root,
                                     skip_bad_images, log)
        shared_seconds = time.perf_counter() - started
        for spec in group:
            if load_stored(spec):  # stored by a concurrent process meanwhile
                continue
            if force:
                store.remove_partial(spec.run_id)
            try:
                result = _evaluate_spec(spec, data, device, group_batch_size, store, log)
            except NonFiniteOutput:
                store.remove_partial(spec.run_id)  # store nothing of a diverged spec
                raise
            result["provenance"]["shared_setup_s"] = shared_seconds
            store.save(result)
            store.remove_partial(spec.run_id)
            results[spec.run_id] = result
            log(f"stored: {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot -> "
                f"{store.path_for(spec.run_id)}")
    return [results[spec.run_id] for spec in specs]


def _resumable_runs(store: Optional[ResultStore], spec: RunSpec, data: EvaluationData, episodes: list[Episode],
                    log: Callable[[str], None]) -> list[dict]:
    """The completed runs of an interrupted evaluation of `spec`, when its checkpoint matches exactly."""
    partial = store.load_partial(spec.run_id) if store is not None else None
    if partial is None:
        return []
    runs = partial.get("runs")
    ok = (partial.get("spec") == spec.to_dict() and partial.get("skipped_images") == data.skipped_images
          and isinstance(runs, list) and len(runs) < len(episodes))
    if ok:
        for run, episode in zip(runs, episodes):
            ok = ok and (run.get("run") == episode.run and run.get("seed") == episode.seed
                         and run.get("num_queries") == len(episode.queries)
                         and run.get("support_images") == data.support_names(episode))
    if not ok:
        log(f"ignoring the checkpoint {store.partial_path_for(spec.run_id)}: it does not match the data or spec")
        return []
    log(f"resuming {spec.method} {spec.benchmark} fold {spec.fold} {spec.shot}-shot at run {len(runs)} "
        f"({len(runs)} of {len(episodes)} runs checkpointed)")
    return runs


def _evaluate_spec(spec: RunSpec, data: EvaluationData, device: torch.device, batch_size: int,
                   store: Optional[ResultStore] = None, log: Callable[[str], None] = lambda message: None) -> dict:
    benchmark = data.benchmark
    method = spec.build()
    num_base = len(benchmark.base_classes(spec.fold))
    started = time.perf_counter()
    episodes = [make_episode(benchmark, spec.fold, spec.shot, r, spec.seed, data.pixel_counts)
                for r in range(spec.runs)]
    runs = list(_resumable_runs(store, spec, data, episodes, log))
    resumed = len(runs)
    with progress_bar() as progress:
        bar = progress.add_task(f"{spec.method} {benchmark.name} fold {spec.fold} {spec.shot}-shot",
                                total=sum(len(e.queries) for e in episodes[resumed:]))
        for episode in episodes[resumed:]:
            confusion = evaluate_episode(method, data, spec, episode, device, batch_size,
                                         on_batch=lambda n: progress.advance(bar, n))
            runs.append({
                "run": episode.run, "seed": episode.seed, "num_queries": len(episode.queries),
                "support_images": data.support_names(episode),
                "confusion": confusion.tolist(),
                "scores": scores(confusion.numpy(), num_base, spec.convention).as_dict(),
            })
            if store is not None and len(runs) < len(episodes):
                store.save_partial(spec.run_id, spec.to_dict(), runs, {"skipped_images": data.skipped_images})
    record = provenance(device)
    record["wall_time_s"] = time.perf_counter() - started
    record["resumed_runs"] = resumed
    if data.segmenter_source is not None:
        record["segmenter_source"] = data.segmenter_source
    return {
        "run_id": spec.run_id, "spec": spec.to_dict(), "oracle": method.is_oracle,
        "convention": spec.convention, "convention_description": CONVENTIONS[spec.convention],
        "class_ids": list(benchmark.episode_classes(spec.fold)),
        "class_names": list(benchmark.episode_class_names(spec.fold)),
        "num_base": num_base, "num_novel": len(benchmark.novel_classes(spec.fold)),
        "runs": runs, "aggregate": _aggregate([r["scores"] for r in runs]), "provenance": record,
        "skipped_images": data.skipped_images,
    }
