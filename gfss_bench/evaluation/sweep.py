"""Sweeps: a YAML file describing a grid of run specs, expanded and evaluated with resume.

The keys are the options of `gfss-bench run`, spelled with underscores (see `plan`); the grid axes take a
list or a single value. Example (`fold: all` or no `fold` means every fold):

    results_dir: results
    method: [diam, imprint]
    benchmark: [synthetic5i]          # names or benchmark YAML files (relative to the current folder)
    protocol: [practical, standard]
    fold: all
    shot: [1, 5]
    runs: 5
    seed: 2023
    convention: [diam]
    option:                           # per method; a list is a grid axis
      diam:
        iterations: [50, 100]
        pi_strategy: self
    queries: 1000                     # evaluation settings, as for run: image_size, queries, support_source, ...
    episodes: diam                    # or independent, or an episodes JSON file
    checkpoint: model_ckpt            # or segmenter: FAMILY:REF
    data_root: data/VOC2012
    feature_precision: fp16           # default: fp32, as the official code
    feature_cache: /scratch/gfss-features
    plugin: [my_methods]              # modules imported first, as with --plugin

Files written before the keys were unified still load: `methods`, `benchmarks`, `protocols`, `folds`, `shots`,
`conventions`, `options` and `plugins` are read as their singular names, and an `evaluation:` mapping of
EvaluationSettings fields as the individual settings.

The grid is methods x option settings x benchmarks x protocols x folds x shots x conventions. Specs
already stored (by run id) are skipped, so rerunning the same sweep after a crash or a kill resumes
it; a spec interrupted between runs resumes at its first missing run (see `runner.execute`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from gfss_bench.evaluation.plan import EVALUATION_KEYS, KEYS, plan
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.errors import GFSSError
from gfss_bench.userfiles import key_name, load_yaml_file, quote

ALIASES = {"methods": "method", "benchmarks": "benchmark", "protocols": "protocol", "folds": "fold",
           "shots": "shot", "conventions": "convention", "options": "option", "plugins": "plugin"}


def load_config(path: Path | str) -> dict:
    """Read and check a sweep YAML file: a mapping of run option names (or their older spellings) to values."""
    path = Path(path).expanduser()
    config = load_yaml_file(path, "sweep config")  # size, nesting and aliases bounded (gfss_bench/userfiles.py)
    if not isinstance(config, dict):
        raise GFSSError(f"sweep config {path} must be a YAML mapping (keys: {', '.join(sorted(KEYS))})")
    run_settings(config, f"sweep config {path}")
    return config


def run_settings(config: dict, where: str = "sweep config") -> dict[str, Any]:
    """The run settings of a sweep config: older spellings renamed, `evaluation:` spread into its settings."""
    settings: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise GFSSError(f"{where}: key {quote(key)} is not a name; choose from: {', '.join(sorted(KEYS))}")
        if key == "evaluation":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value) \
                    or set(value) - set(EVALUATION_KEYS):
                raise GFSSError(f"{where}: 'evaluation' must map settings to values; settings: "
                                f"{', '.join(sorted(EVALUATION_KEYS))}")
            items = [(EVALUATION_KEYS[field], item) for field, item in value.items()]
        else:
            items = [(ALIASES.get(key, key), value)]
        for name, item in items:
            if name in settings:
                raise GFSSError(f"{where}: {quote(name, 100)} is given twice (also under another spelling)")
            settings[name] = item
    unknown = sorted(key_name(key) for key in set(settings) - KEYS)
    if unknown:
        raise GFSSError(f"{where}: unknown key(s) {', '.join(unknown)}; choose from: {', '.join(sorted(KEYS))}")
    return settings


def _plan(config: dict, where: str):
    """The config's plan; every error names `where` (the sweep file), also those of the run options' checks."""
    try:
        return plan(run_settings(config, where), where)
    except GFSSError as error:
        message = str(error)
        raise GFSSError(message if message.startswith(where) else f"{where}: {message}") from None


def expand(config: dict, where: str = "sweep config") -> list[RunSpec]:
    """Every spec of the grid, in a stable order (method, options, benchmark, protocol, fold, shot, convention).
    `where` starts every error message (the CLI passes "sweep config FILE")."""
    return _plan(config, where).specs


def run_sweep(config: dict, results_dir: Optional[Path | str] = None, where: str = "sweep config",
              **execute_kwargs: Any) -> list[dict]:
    """Expand the grid and evaluate what is not stored yet; returns every spec's result. `execute_kwargs` override
    what the config says (e.g. `force`, `log`); `where` starts the messages of errors in the config."""
    planned = _plan(config, where)
    if results_dir is not None:
        planned.results_dir = Path(results_dir)
    log = execute_kwargs.pop("log", lambda message: None)
    planned.execute_kwargs.update(execute_kwargs)
    return planned.execute(log)


def results_dir_of(config: dict, override: Optional[Path | str] = None) -> Path:
    """Where the sweep stores its results: `override` (--results-dir), else the config's, else results/."""
    return Path(override if override is not None else (config.get("results_dir") or "results")).expanduser()
