"""One spec builder for `gfss-bench run` and `gfss-bench sweep`.

Both describe what to evaluate with the same settings, named as the run options are (`--batch-size` is
`batch_size`): `run` takes them from its command line, a sweep from a YAML file. The axes `method`, `protocol`,
`benchmark`, `fold`, `shot` and `convention` are lists (the grid is their product); `option` maps a method to its
options, a list being one more grid axis. `plan` turns the settings into run specs and the arguments of
`runner.execute`, so a sweep accepts everything `run` accepts and both build identical specs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from gfss_bench.models.features import FeatureConfig
from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import (
    DEFAULT_RUNS, DEFAULT_SEED, RunSpec, check_at_least_one, resolve_device, validate_settings)
from gfss_bench.errors import GFSSError, resolve_option
from gfss_bench.userfiles import key_name, quote

AXES = {"method": str, "protocol": str, "benchmark": str, "fold": int, "shot": int, "convention": str, "plugin": str}
SCALARS: dict[str, tuple[type, ...]] = {
    "runs": (int,), "seed": (int,), "device": (str,), "batch_size": (int,), "results_dir": (str,),
    "force": (bool,), "data_root": (str,), "skip_bad_images": (bool,), "checkpoint": (str,), "segmenter": (str,),
    "image_size": (int,), "queries": (int, str), "support_source": (str,), "min_support_pixels": (int,),
    "single_novel_supports": (bool,), "episodes": (str,), "feature_precision": (str,), "feature_cache": (str,),
    "feature_memory": (int, float), "workers": (int,),
}
DEFAULTS: dict[str, Any] = {
    "method": ["diam"], "protocol": ["practical"], "benchmark": ["synthetic5i"], "fold": [], "shot": [1],
    "convention": ["diam"], "plugin": [], "option": {}, "runs": DEFAULT_RUNS, "seed": DEFAULT_SEED, "device": "auto",
    "results_dir": "results", "force": False, "skip_bad_images": False, "episodes": "diam",
    "feature_precision": "fp32",
}
KEYS = frozenset(AXES) | frozenset(SCALARS) | {"option"}
EVALUATION_KEYS = {"image_size": "image_size", "max_queries": "queries", "support_source": "support_source",
                   "min_support_pixels": "min_support_pixels", "single_novel_supports": "single_novel_supports"}


def option_name(key: str) -> str:
    """The command-line spelling of a setting: batch_size -> --batch-size."""
    return "--" + key.replace("_", "-")


@dataclass
class Plan:
    """The specs to evaluate and how: what `runner.execute` needs besides the specs."""

    specs: list[RunSpec]
    results_dir: Path
    execute_kwargs: dict[str, Any]

    def execute(self, log: Callable[[str], None], workers=None) -> list[dict]:
        from gfss_bench.results.store import ResultStore

        kwargs = dict(self.execute_kwargs, log=log)
        if workers is not None:
            kwargs["workers"] = workers
        return execute(self.specs, ResultStore(self.results_dir), **kwargs)


def check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the names and value types of `settings`; return them with the defaults filled in.

    `where` prefixes errors ("sweep config s.yaml") so that a user sees which file and key is wrong.
    """
    unknown = sorted(key_name(key) for key in set(settings) - KEYS)
    if unknown:
        raise GFSSError(f"{where}: unknown key(s) {', '.join(unknown)}; choose from: {', '.join(sorted(KEYS))}")
    checked = {key: None for key in SCALARS} | DEFAULTS
    for key, value in settings.items():
        if value is None:
            continue
        if key in AXES:
            checked[key] = _axis(key, value, AXES[key], where)
        elif key == "option":
            checked[key] = _method_options(value, where)
        else:
            kinds = SCALARS[key]
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                raise GFSSError(f"{where}: {key!r} ({option_name(key)}) must be "
                                f"{' or '.join(k.__name__ for k in kinds)}, got {quote(value)}")
            checked[key] = value
    return checked


def _axis(key: str, value: Any, kind: type, where: str) -> list:
    if key == "fold" and value == "all":
        return []
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values and key != "fold":
        raise GFSSError(f"{where}: {key!r} is an empty list; give at least one value")
    for item in values:
        if (isinstance(item, bool) and kind is not bool) or not isinstance(item, kind):
            what = "integers" if kind is int else "names"
            raise GFSSError(f"{where}: {key!r} ({option_name(key)}) must hold {what}, got {quote(item)}")
    return list(dict.fromkeys(values))


def _method_options(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) or v is None for v in value.values()):
        raise GFSSError(f"{where}: 'option' must map a method name to its options (KEY: VALUE or KEY: [VALUES])")
    return {method: dict(options or {}) for method, options in value.items()}


def evaluation_overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation settings given (the rest keep the benchmark's official values), as EvaluationSettings fields."""
    overrides = {field: settings[key] for field, key in EVALUATION_KEYS.items()
                 if key != "queries" and settings.get(key) is not None}
    queries = settings.get("queries")
    if queries is not None:
        if isinstance(queries, str) and queries != "all" and not queries.isdigit():
            raise GFSSError(f"--queries must be a positive integer or 'all', got {quote(queries)}")
        overrides["max_queries"] = None if queries == "all" else int(queries)
    return overrides


def plan(settings: Mapping[str, Any], where: str = "run") -> Plan:
    """Every spec of the settings' grid, in a stable order (method, option setting, benchmark, protocol, fold, shot,
    convention), and the arguments to evaluate them with."""
    from gfss_bench.data.episodes import SAMPLERS, EpisodeFile
    from gfss_bench.models.families import SegmenterLoader
    from gfss_bench.plugins import load_plugins
    from gfss_bench.protocols import resolve_benchmark

    s = check_settings(settings, where)
    load_plugins(s["plugin"])
    check_at_least_one("--batch-size", s["batch_size"])
    validate_settings(methods=s["method"], protocols=s["protocol"], shots=s["shot"], runs=s["runs"],
                      conventions=s["convention"], feature_precision=s["feature_precision"])
    for key in ("workers", "feature_memory"):
        if s[key] is not None and s[key] < 0:
            raise GFSSError(f"{option_name(key)} must be >= 0, got {quote(s[key])}")
    for method in s["option"]:
        if method not in s["method"]:
            raise GFSSError(f"{where}: options for {quote(method)}, which is not among methods "
                            f"({', '.join(s['method'])})")
    device = resolve_device(s["device"])
    evaluation = evaluation_overrides(s)
    episode_file = None if s["episodes"] in SAMPLERS else EpisodeFile(s["episodes"])
    benchmarks = [resolve_option("--benchmark", resolve_benchmark, name) for name in s["benchmark"]]
    loader, specs, folds, segmenters = SegmenterLoader(), [], {}, {}
    for bench in benchmarks:  # once per benchmark, not per method: checkpoint files are found and hashed here
        bench.evaluation_settings(**evaluation)  # validates the values before anything runs
        folds[bench.name] = [bench.check_fold(fold) for fold in s["fold"]] or list(range(bench.num_folds))
        segmenters[bench.name] = _segmenters(loader, s["segmenter"], s["checkpoint"], bench, folds[bench.name],
                                             s["protocol"], device)
    for method in s["method"]:
        for chosen in _option_grid(s["option"].get(method, {})):
            for bench in benchmarks:
                for protocol, fold, shot, convention in itertools.product(s["protocol"], folds[bench.name],
                                                                          s["shot"], s["convention"]):
                    specs.append(RunSpec.create(
                        method, bench.name, fold, protocol, shot, chosen, evaluation, runs=s["runs"], seed=s["seed"],
                        convention=convention, device=device.type, feature_precision=s["feature_precision"],
                        feature_cache=s["feature_cache"] is not None, segmenter=segmenters[bench.name][fold, protocol],
                        episodes=episode_file.episodes if episode_file else s["episodes"]))
    features = FeatureConfig(_path(s["feature_cache"]), s["feature_memory"], s["workers"])
    kwargs = {"segmenter_loader": loader, "batch_size": s["batch_size"], "force": s["force"],
              "data_root": _path(s["data_root"]), "skip_bad_images": s["skip_bad_images"], "features": features,
              "episode_file": episode_file.path if episode_file else None}
    return Plan(list(dict.fromkeys(specs)), Path(s["results_dir"]).expanduser(), kwargs)


def _option_grid(options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every option setting of a method: a list value is a grid axis."""
    keys = sorted(options)
    axes = [value if isinstance(value, list) else [value] for value in (options[key] for key in keys)]
    return [dict(zip(keys, values)) for values in itertools.product(*axes)]


def _segmenters(loader, segmenter_ref: Optional[str], checkpoint: Optional[str], bench, folds, protocols, device
                ) -> dict[tuple[int, str], str]:
    """{(fold, protocol): RunSpec.segmenter} for --segmenter FAMILY:REF, or --checkpoint PATH (the pspnet family,
    with the checkpoint found per fold), or the built-in segmenter; each is registered with `loader`."""
    from gfss_bench.models.checkpoints import find_fold_checkpoint
    from gfss_bench.models.families import SegmenterContext, parse_segmenter

    if segmenter_ref is not None and checkpoint is not None:
        raise GFSSError("--segmenter and --checkpoint both choose the base segmenter; pass one of them "
                        "(--checkpoint PATH is --segmenter pspnet:PATH)")
    family, reference = parse_segmenter(segmenter_ref) if segmenter_ref is not None else ("builtin", "")
    segmenters = {}
    for fold in folds:
        if checkpoint is not None:  # the same label as --segmenter pspnet:PATH: one report row for the same choice
            family, reference = "pspnet", str(find_fold_checkpoint(checkpoint, fold, bench.dataset,
                                                                   bench.official_split(fold)))
        for protocol in protocols:
            segmenters[fold, protocol] = loader.add(family, reference, SegmenterContext(bench, fold, protocol, device),
                                                    chosen=checkpoint)
    return segmenters


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser() if value is not None else None
