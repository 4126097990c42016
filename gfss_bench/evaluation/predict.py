"""Predictions of a few chosen queries of stored results, recomputed from their run specs (for `gfss-bench show`).

Only the episode's support set and the chosen queries go through the segmenter; every method is fitted on the
same support set as in the stored run and predicts with the same per-query seeds, so its prediction is the one that
was scored. The support images must be the stored ones (else the data changed and nothing is drawn), and where
per-query records are stored each recomputed query's counts are compared with them (a warning names any that
differ).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from gfss_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, preprocess, resized_shape
from gfss_bench.errors import GFSSError
from gfss_bench.evaluation.runner import (
    EvaluationData, _open_checked_split, _support_task, query_record, query_seeds)
from gfss_bench.evaluation.spec import RunSpec, resolve_device
from gfss_bench.methods import build_method
from gfss_bench.models.families import SegmenterLoader, as_loaded
from gfss_bench.models.features import Extractor, StreamedFeatures
from gfss_bench.protocols import get_benchmark, get_protocol
from gfss_bench.protocols.catalog import EvaluationSettings
from gfss_bench.results.describe import result_label
from gfss_bench.scoring import predicted_labels, query_confusions


@dataclass
class Panel:
    """One image shown: RGB float [h, w, 3] in 0..1 (padding cropped) and a label map in the episode space."""

    name: str
    image: np.ndarray
    label: np.ndarray
    predictions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclass
class Qualitative:
    """What `results.qualitative.figure` draws: queries with every method's prediction, and the support set."""

    queries: list[Panel]
    supports: list[Panel]
    methods: list[str]
    class_names: list[str]
    num_base: int
    title: str


def spec_of(result: dict) -> RunSpec:
    """The RunSpec a stored result was computed from; GFSSError when it does not rebuild to the same run id."""
    fields = dict(result["spec"])
    fields["method_options"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                            for k, v in fields["method_options"].items()))
    fields["evaluation"] = EvaluationSettings(**fields["evaluation"]) if fields.get("evaluation") else None
    try:
        spec = RunSpec(**fields)
    except TypeError:
        spec = None
    if spec is None or spec.run_id != result["run_id"]:
        raise GFSSError(f"the result {result['run_id']} was stored by another gfss-bench version (its run spec does "
                        "not rebuild); run it again with this version to show it")
    return spec


def segmenter_loader_for(result: dict, segmenter_ref: Optional[str], checkpoint: Optional[str]) -> SegmenterLoader:
    """A loader holding the weights given as `run` takes them (--segmenter FAMILY:REF or --checkpoint PATH); a
    result whose spec names other weights (changed or missing files) is then refused when it is loaded."""
    from gfss_bench.evaluation.plan import _segmenters

    loader = SegmenterLoader()
    if segmenter_ref is not None or checkpoint is not None:
        spec = result["spec"]
        _segmenters(loader, segmenter_ref, checkpoint, get_benchmark(spec["benchmark"]), [spec["fold"]],
                    [spec["protocol"]], resolve_device("cpu"))
    return loader


def _display(image: torch.Tensor, label: torch.Tensor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised image back to RGB 0..1 and the label, both cropped to the resized image (no padding)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return rgb[:shape[0], :shape[1]], label.numpy()[:shape[0], :shape[1]]


def _panel(split, index: int, size: int, lut: np.ndarray) -> Panel:
    image, label = split.load(index)
    shape = resized_shape(*label.shape, size)
    shown, mapped = _display(*preprocess(image, label, size), shape)
    return Panel(split.names[index], shown, lut[mapped])


def _data(spec: RunSpec, device: torch.device, data_root: Optional[Path], log: Callable[[str], None],
          segmenter_loader: Callable):
    """The episode data of `spec` with streamed features (nothing is extracted before it is asked for)."""
    benchmark = get_benchmark(spec.benchmark)
    split, counts, _ = _open_checked_split(benchmark, "val", data_root, False, log)
    support_split, support_counts = split, None
    if spec.evaluation.support_source == "train":
        support_split, support_counts, _ = _open_checked_split(benchmark, "train", data_root, False, log)
    segmenter = as_loaded(segmenter_loader(spec, device)).segmenter
    weight, bias = segmenter.classifier_weight_and_bias()
    size = spec.evaluation.image_size
    queries = StreamedFeatures(Extractor(segmenter, split, size, device, spec.feature_precision))
    supports = queries if support_split is split else StreamedFeatures(
        Extractor(segmenter, support_split, size, device, spec.feature_precision))
    data = EvaluationData(benchmark, weight.detach().float().cpu(), bias.detach().float().cpu(), counts, queries,
                          list(split.names), supports, support_counts,
                          list(support_split.names) if support_counts is not None else None)
    return data, split, support_split


def recompute(results: list[dict], run: int, query_names: list[str], stored_records: dict[str, Optional[dict]],
              data_root: Optional[Path] = None, log: Callable[[str], None] = lambda message: None,
              segmenter_loader: Optional[Callable] = None, base_column: bool = False) -> Qualitative:
    """The chosen queries of run `run` with each result's prediction (results of one benchmark, protocol, fold and
    shot, sharing the data and episode); `stored_records[run_id]` holds that run's per-query records, if any.
    `base_column` adds the base segmenter's prediction first (when no stored `base` result was chosen).
    `segmenter_loader` builds the segmenter as in `runner.execute` (default: the built-in ones)."""
    specs = [spec_of(result) for result in results]
    first = specs[0]
    if len({(s.data_key[:4], s.episode_key(run)) for s in specs}) > 1:
        raise GFSSError("the chosen results do not share one episode (benchmark, protocol, fold, shot, segmenter, "
                        "evaluation settings and sampler): narrow them with -b, -p, -k and -m")
    if not 0 <= run < min(s.runs for s in specs):
        raise GFSSError(f"--run {run}: the chosen results hold runs 0..{min(s.runs for s in specs) - 1}")
    device = resolve_device("auto" if first.device == "cuda" else first.device)
    data, split, support_split = _data(first, device, data_root, log, segmenter_loader or SegmenterLoader())
    episode = _stored_episode(data, first, run, results[0])
    indices = _query_indices(split, episode, query_names, first.fold, run)
    benchmark, size = data.benchmark, first.evaluation.image_size
    query_lut = benchmark.episode_label_lut(first.fold).astype(np.int64)
    queries = [_panel(split, i, size, query_lut) for i in indices]
    support_lut = get_protocol(first.protocol).support_label_lut(benchmark, first.fold).astype(np.int64)
    supports = [_panel(support_split, i, size, support_lut) for group in episode.supports for i in group]
    features, labels = next(data.queries.batches([indices]))
    labels = torch.from_numpy(query_lut)[labels.long()].to(device)
    support_task = _support_task(data, first, episode, device)
    task = dataclasses.replace(support_task, query_features=features, query_valid=labels != 255,
                               query_seeds=query_seeds(episode.seed, indices))
    columns = [("base", build_method("base"), None)] if base_column else []
    columns += [(result_label(result), spec.build(), result) for spec, result in zip(specs, results)]
    for label, method, result in columns:
        fitted = method.fit(support_task)
        probs = fitted.predict(dataclasses.replace(task, query_labels=labels if method.is_oracle else None)).float()
        predicted = predicted_labels(probs, labels.shape[-2:]).cpu().numpy()
        for panel, prediction in zip(queries, predicted):
            panel.predictions[label] = prediction[:panel.label.shape[0], :panel.label.shape[1]]
        if result is not None:
            _check_stored(result, stored_records.get(result["run_id"]), query_names,
                          query_confusions(probs, labels, len(benchmark.episode_classes(first.fold))), log)
    return Qualitative(queries, supports, [label for label, _, _ in columns],
                       list(benchmark.episode_class_names(first.fold)), len(benchmark.base_classes(first.fold)),
                       f"{benchmark.name}, {first.protocol} protocol, {first.shot}-shot, fold {first.fold}, run {run}")


def _stored_episode(data: EvaluationData, spec: RunSpec, run: int, result: dict):
    """Run `run`'s episode, refused when its support images are not the stored ones (the data changed)."""
    episode = data.episodes(spec)[run]
    stored = result["runs"][run].get("support_images") if run < len(result.get("runs", [])) else None
    if stored is not None and stored != data.support_names(episode):
        raise GFSSError(f"the data changed since the result was stored: run {run}'s support images are now "
                        f"{data.support_names(episode)[0][:3]}..., not the stored {stored[0][:3]}...; "
                        "point --data-root at the data it was computed on")
    return episode


def _query_indices(split, episode, names: list[str], fold: int, run: int) -> list[int]:
    """The val indices of the named queries, each of which must be among the episode's queries."""
    positions = {name: i for i, name in enumerate(split.names)}
    candidates = set(episode.queries)
    missing = [name for name in names if positions.get(name) not in candidates]
    if missing:
        raise GFSSError(f"--query {missing[0][:100]!r} is not among the queries of fold {fold} run {run}")
    return [positions[name] for name in names]


def _check_stored(result: dict, records: Optional[dict], names: list[str], confusions: torch.Tensor,
                  log: Callable[[str], None]) -> None:
    """Warn about each recomputed query whose counts differ from its stored per-query record."""
    if records is None:
        return
    stored = {q["query"]: q for q in records["queries"]}
    for name, confusion in zip(names, confusions):
        if name in stored and query_record(name, confusion) != stored[name]:
            log(f"warning: {result['method_label']} on {name}: the recomputed prediction differs from the scored one "
                "(other hardware or library versions?)")
