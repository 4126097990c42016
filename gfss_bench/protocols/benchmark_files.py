"""Benchmarks defined in YAML files (`-b path/to/bench.yaml`), and `resolve_benchmark`, which every `-b` goes through.

A file names the classes (ids 1..C in list order), the novel class ids of each fold and, optionally, where the
data is and the evaluation settings; see README, "A benchmark from a YAML file". It is read with
`yaml.safe_load` within bounds (size, nesting, aliases: `gfss_bench/userfiles.py`); every problem is a one-line
GFSSError naming the file and the key, quoting at most about 200 characters of the value.
"""

from __future__ import annotations

import re
from pathlib import Path

from gfss_bench.errors import GFSSError
from gfss_bench.protocols.catalog import (
    BENCHMARKS, BUILTIN_BENCHMARKS, OFFICIAL_IMAGE_SIZE, SUPPORT_SOURCES, Benchmark, check_definition,
    register_benchmark, scaled_min_support_pixels)
from gfss_bench.registry import registering_from, unknown_choice_message
from gfss_bench.userfiles import load_yaml_file, quote

SUFFIXES = (".yaml", ".yml")
_KIND_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
REQUIRED = ("name", "classes", "folds")
OPTIONAL = ("description", "data_root", "image_size", "min_support_pixels", "queries", "support_source",
            "single_novel_supports", "batch_size", "val_batch_size")


def is_benchmark_file(value: str) -> bool:
    """Whether a `-b` value names a YAML file rather than a registered benchmark."""
    return str(value).lower().endswith(SUFFIXES)


def _typed(path: Path, config: dict, key: str, kind: type, default=None):
    """config[key] checked to be of `kind` (bool is not an int here), or `default` when the key is absent."""
    if key not in config:
        return default
    value = config[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GFSSError(f"benchmark file {path}: {key!r} must be {_KIND_NAMES[kind]}, got {quote(value)}")
    return value


def load_benchmark_file(path: Path | str) -> Benchmark:
    """The benchmark a YAML file defines (not registered; see `resolve_benchmark`)."""
    path = Path(path).expanduser()
    config = load_yaml_file(path, "benchmark file")  # size, nesting and aliases bounded (gfss_bench/userfiles.py)
    where = f"benchmark file {path}"
    if not isinstance(config, dict):
        raise GFSSError(f"{where} must be a YAML mapping with the keys {', '.join(REQUIRED)} (and optionally "
                        f"{', '.join(OPTIONAL)})")
    for key in config:
        if key not in REQUIRED + OPTIONAL:
            raise GFSSError(f"{where}: " + unknown_choice_message("key", str(key),
                                                                  sorted(REQUIRED + OPTIONAL)))
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise GFSSError(f"{where}: missing key(s) {', '.join(missing)}; a benchmark needs {', '.join(REQUIRED)}")
    name = _typed(path, config, "name", str)
    if not NAME.fullmatch(name) or is_benchmark_file(name):
        raise GFSSError(f"{where}: 'name' {quote(name)} must be letters, digits, '_', '-' and '.' (starting with a "
                        "letter or digit, not ending in .yaml); it names the benchmark in results and file names")
    if name in BUILTIN_BENCHMARKS:
        raise GFSSError(f"{where}: 'name' {quote(name)} is a built-in benchmark; choose another name")
    classes = _typed(path, config, "classes", list)
    folds = _typed(path, config, "folds", list)
    for fold, novel in enumerate(folds):
        if not isinstance(novel, list):
            raise GFSSError(f"{where}: folds[{fold}] must be a list of novel class ids, got {quote(novel)}")
    check_definition(classes, folds, where)
    data_root = _typed(path, config, "data_root", str)
    queries = config.get("queries", "all")
    if queries != "all" and (isinstance(queries, bool) or not isinstance(queries, int)):
        raise GFSSError(f"{where}: 'queries' must be a positive integer or all, got {quote(queries)}")
    support_source = _typed(path, config, "support_source", str, "val")
    if support_source not in SUPPORT_SOURCES:
        raise GFSSError(f"{where}: 'support_source' {quote(support_source)} is unknown; choose from: "
                        f"{', '.join(SUPPORT_SOURCES)}")
    image_size = _typed(path, config, "image_size", int, OFFICIAL_IMAGE_SIZE)
    batch_size = _typed(path, config, "batch_size", int, 16)
    if batch_size < 1:
        raise GFSSError(f"{where}: 'batch_size' must be >= 1, got {quote(batch_size)}")
    val_batch_size = _typed(path, config, "val_batch_size", int, 200)
    if val_batch_size < 1:
        raise GFSSError(f"{where}: 'val_batch_size' must be >= 1, got {quote(val_batch_size)}")
    benchmark = Benchmark(
        name, _typed(path, config, "description", str, f"from {path.name}"), name, tuple(classes),
        tuple(tuple(novel) for novel in folds), image_size=image_size,
        min_support_pixels=_typed(path, config, "min_support_pixels", int, scaled_min_support_pixels(image_size)),
        max_queries=None if queries == "all" else queries, shuffle_queries=queries != "all",
        batch_size=batch_size, val_batch_size=val_batch_size, support_source=support_source,
        single_novel_supports=_typed(path, config, "single_novel_supports", bool, True),
        data_root=None if data_root is None else (path.parent / data_root).resolve(), source=path.resolve())
    try:
        benchmark.evaluation_settings()
    except GFSSError as error:  # the settings' messages name the run options; here the keys are meant
        raise GFSSError(f"{where}: " + re.sub(r"--([a-z-]+)", lambda m: repr(m.group(1).replace("-", "_")),
                                              str(error))) from None
    return benchmark


def resolve_benchmark(value: str) -> Benchmark:
    """The benchmark a `-b` value names: a registered name, or a YAML file, which is read and registered under its
    name (so that `get_benchmark(name)` finds it in this process). Re-reading an edited file replaces its earlier
    definition; a name already taken by a built-in, a plugin or another file is an error."""
    if not is_benchmark_file(value):
        try:
            return BENCHMARKS.get(value)
        except GFSSError as error:
            raise GFSSError(f"{error}; or pass a benchmark YAML file (path ending in .yaml)") from None
    benchmark = load_benchmark_file(value)
    registered = BENCHMARKS.get(benchmark.name) if benchmark.name in BENCHMARKS else None
    if registered is not None and registered.source != benchmark.source:
        raise GFSSError(f"benchmark file {value}: 'name' {quote(benchmark.name)} is already defined by "
                        f"{registered.source or BENCHMARKS.origin(benchmark.name)}; choose another name")
    with registering_from(str(benchmark.source)):
        if registered is None:
            register_benchmark(benchmark)
        elif registered != benchmark:
            BENCHMARKS.replace(benchmark.name, benchmark)
    return BENCHMARKS.get(benchmark.name)
