"""Sweeps: a YAML file describing a grid of run specs, expanded and evaluated with resume.

Example (every list may also be a single value; `folds: all` or no `folds` means every fold):

    results_dir: results
    methods: [diam, imprint]
    benchmarks: [synthetic5i]
    protocols: [practical, standard]
    folds: all
    shots: [1, 5]
    runs: 5
    seed: 2023
    conventions: [diam]
    options:              # per method; a list is a grid axis
      diam:
        iterations: [50, 100]
        pi_strategy: self
    evaluation:           # optional: overrides of the benchmark's official evaluation settings
      max_queries: 1000
      support_source: val
    feature_precision: fp32   # default: fp16 on CUDA, fp32 on CPU
    feature_cache: /scratch/gfss-features   # optional float16 on-disk features

The grid is methods x option settings x benchmarks x protocols x folds x shots x conventions. Specs
already stored (by run id) are skipped, so rerunning the same sweep after a crash or a kill resumes
it; a spec interrupted between runs resumes at its first missing run (see `runner.execute`).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Optional

from gfss_bench.benchmark.features import FeatureConfig
from gfss_bench.benchmark.runner import DEFAULT_RUNS, DEFAULT_SEED, RunSpec, default_precision, resolve_device
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import EvaluationSettings

KEYS = {"results_dir", "methods", "benchmarks", "protocols", "folds", "shots", "runs", "seed", "conventions",
        "options", "device", "batch_size", "data_root", "skip_bad_images", "evaluation", "feature_precision",
        "feature_cache"}


EVALUATION_FIELDS = {field.name for field in dataclasses.fields(EvaluationSettings)}


def _as_list(config: dict, key: str, default: list, kind: type) -> list:
    value = config.get(key, default)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise GFSSError(f"sweep config: {key!r} is an empty list; give at least one value")
    for item in values:
        if kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise GFSSError(f"sweep config: {key!r} must hold integers, got {item!r}")
        if kind is str and not isinstance(item, str):
            raise GFSSError(f"sweep config: {key!r} must hold names, got {item!r}")
    return list(dict.fromkeys(values))


def load_config(path: Path | str) -> dict:
    """Read and check a sweep YAML file (a mapping with the keys in `KEYS`)."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise GFSSError(f"cannot read the sweep config {path} ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise GFSSError(f"sweep config {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(config, dict):
        raise GFSSError(f"sweep config {path} must be a YAML mapping (keys: {', '.join(sorted(KEYS))})")
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise GFSSError(f"sweep config {path}: unknown key(s) {', '.join(unknown)}; "
                        f"choose from: {', '.join(sorted(KEYS))}")
    return config


def expand(config: dict) -> list[RunSpec]:
    """Every spec of the grid, in a stable order (method, options, benchmark, protocol, fold, shot, convention)."""
    from gfss_bench.methods import METHODS
    from gfss_bench.protocols import get_benchmark

    methods = _as_list(config, "methods", ["diam"], str)
    benchmarks = _as_list(config, "benchmarks", ["synthetic5i"], str)
    protocols = _as_list(config, "protocols", ["practical"], str)
    shots = _as_list(config, "shots", [1], int)
    conventions = _as_list(config, "conventions", ["diam"], str)
    runs, seed = config.get("runs", DEFAULT_RUNS), config.get("seed", DEFAULT_SEED)
    for key, value in (("runs", runs), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GFSSError(f"sweep config: {key!r} must be an integer, got {value!r}")
    device = resolve_device(str(config.get("device", "auto")))
    precision = str(config.get("feature_precision", default_precision(device)))
    evaluation = config.get("evaluation") or {}
    if not isinstance(evaluation, dict) or set(evaluation) - EVALUATION_FIELDS:
        raise GFSSError(f"sweep config: 'evaluation' must map settings to values; settings: "
                        f"{', '.join(sorted(EVALUATION_FIELDS))}")
    options = config.get("options") or {}
    if not isinstance(options, dict):
        raise GFSSError("sweep config: 'options' must map a method name to its options")
    for name in options:
        if name not in methods:
            raise GFSSError(f"sweep config: options for {name!r}, which is not among methods "
                            f"({', '.join(methods)})")
    for method in methods:
        METHODS.get(method)
    specs = []
    for method in methods:
        method_options = options.get(method) or {}
        if not isinstance(method_options, dict):
            raise GFSSError(f"sweep config: options of {method!r} must be a mapping KEY: VALUE or KEY: [VALUES]")
        keys = sorted(method_options)
        axes = [v if isinstance(v, list) else [v] for v in (method_options[k] for k in keys)]
        for values in itertools.product(*axes):
            chosen = dict(zip(keys, values))
            for benchmark in benchmarks:
                bench = get_benchmark(benchmark)
                folds = config.get("folds", "all")
                fold_list = list(range(bench.num_folds)) if folds == "all" else _as_list(config, "folds", [], int)
                for protocol in protocols:
                    for fold in fold_list:
                        for shot in shots:
                            for convention in conventions:
                                specs.append(RunSpec.create(
                                    method, benchmark, fold, protocol, shot, chosen, evaluation, runs=runs,
                                    seed=seed, convention=convention, device=device.type,
                                    feature_precision=precision,
                                    feature_cache=config.get("feature_cache") is not None))
    return list(dict.fromkeys(specs))


def run_sweep(config: dict, results_dir: Optional[Path | str] = None, **execute_kwargs: Any) -> list[dict]:
    """Expand the grid and evaluate what is not stored yet; returns every spec's result."""
    from gfss_bench.benchmark.runner import execute
    from gfss_bench.results.store import ResultStore

    specs = expand(config)
    root = results_dir if results_dir is not None else config.get("results_dir", "results")
    execute_kwargs.setdefault("batch_size", config.get("batch_size"))
    execute_kwargs.setdefault("skip_bad_images", bool(config.get("skip_bad_images", False)))
    if config.get("data_root") is not None:
        execute_kwargs.setdefault("data_root", Path(config["data_root"]).expanduser())
    if config.get("feature_cache") is not None:
        execute_kwargs.setdefault("features", FeatureConfig(cache_dir=Path(config["feature_cache"]).expanduser()))
    return execute(specs, ResultStore(root), **execute_kwargs)
