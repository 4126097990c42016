"""Fuzzing the loaders of user files with hypothesis: generated YAML and JSON (deep, wide, aliased, non-UTF-8, huge
numbers, wrong types) thrown at the benchmark-file, sweep-file, episodes-file and result-file loaders. Each input
gives a clean error (a one-line GFSSError; ValueError with a reason for result files) or a valid object, within a
time and memory bound."""

import json
import resource
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from gfss_bench.data.episodes import EpisodeFile
from gfss_bench.errors import GFSSError
from gfss_bench.evaluation.plan import KEYS
from gfss_bench.evaluation.sweep import expand, load_config
from gfss_bench.protocols import Benchmark, get_benchmark
from gfss_bench.protocols.benchmark_files import OPTIONAL, REQUIRED, load_benchmark_file
from gfss_bench.results.store import ResultStore, result_problem

SECONDS = 3.0  # per input, on a loaded 2-core machine
MEMORY_MB = 400  # growth of the peak resident memory per input
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
expand({"method": ["imprint"], "fold": [0], "runs": 1})  # imports done once, outside the timed calls


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

scalars = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers(-10 ** 80, 10 ** 80)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.sampled_from(["all", "diam", "val", "x" * 5000]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=30)


def mapping_of(keys):
    """Mappings mostly over the loader's own keys (so the checks behind the parser are reached), with any values."""
    return st.dictionaries(st.sampled_from(sorted(keys)) | st.text(max_size=6), values, max_size=8)


def deep(depth):
    return "a: " + "[" * depth + "]" * depth


def bomb(levels, width):
    lines = [f"- &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


def as_yaml(value):
    return yaml.safe_dump(value, allow_unicode=True)


def yaml_inputs(keys):
    """Bytes of a YAML file: dumped mappings, raw text, deep nesting, alias bombs, huge numbers, non-UTF-8."""
    return st.one_of(
        mapping_of(keys).map(as_yaml),
        st.text(max_size=200),
        st.integers(1, 3000).map(deep),
        st.builds(lambda key, levels, width: f"{key}:\n  " + bomb(levels, width).replace("\n", "\n  "),
                  st.sampled_from(sorted(keys)), st.integers(2, 12), st.integers(2, 12)),
        st.builds(lambda key, digits: f"{key}: 1{'0' * digits}", st.sampled_from(sorted(keys)), st.integers(0, 6000)),
        st.builds(lambda text, mapping: as_yaml(mapping) + f"\nextra: *{text}", st.text(max_size=5), mapping_of(keys)),
    ).map(lambda text: text.encode("utf-8")) | st.binary(max_size=200).map(lambda data: b"\xff" + data)


def json_inputs(documents):
    return st.one_of(
        documents.map(lambda value: json.dumps(value).encode()),
        values.map(lambda value: json.dumps(value).encode()),
        st.integers(1, 300000).map(lambda n: b"[" * n),
        st.integers(20, 2000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(0, 6000).map(lambda n: b"[1" + b"0" * n + b"]"),
        st.binary(max_size=200),
    )


def bounded(load, data: bytes, suffix: str, accepted: tuple):
    """load(path) of a file holding `data`: a result or one of the `accepted` errors, in time and memory."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        peak, started = peak_mb(), time.perf_counter()
        try:
            outcome = load(path)
        except accepted as error:
            message = str(error)
            assert "\n" not in message and len(message) < 1200, message[:2000]
            outcome = error
        assert time.perf_counter() - started < SECONDS
        assert peak_mb() - peak < MEMORY_MB
    return outcome


@FUZZ
@given(yaml_inputs(set(REQUIRED + OPTIONAL)))
def test_benchmark_files(data):
    outcome = bounded(load_benchmark_file, data, ".yaml", (GFSSError,))
    assert isinstance(outcome, (Benchmark, GFSSError))


def _expanded(path):
    config = load_config(path)
    if any(key in config for key in ("plugin", "plugins")):  # would import modules the fuzzer names
        return config
    return expand(config, f"sweep config {path}")


@FUZZ
@given(yaml_inputs(KEYS - {"plugin"}))
def test_sweep_files(data):
    outcome = bounded(_expanded, data, ".yaml", (GFSSError,))
    assert isinstance(outcome, (dict, list, GFSSError))


def _episodes(path):
    episodes = EpisodeFile(path)
    return episodes.entry(get_benchmark("synthetic5i"), 0, 1, 1)


episode_documents = st.lists(st.fixed_dictionaries(
    {"benchmark": st.sampled_from(["synthetic5i", "x"]), "fold": st.integers(-1, 2) | values,
     "shot": st.integers(0, 2) | values,
     "runs": st.lists(st.fixed_dictionaries({"run": st.integers(0, 2) | values,
                                             "supports": st.dictionaries(st.text(max_size=8) | st.sampled_from(
                                                 ["synth16", "synth17"]), st.lists(st.text(max_size=8), max_size=3),
                                                 max_size=3) | values}), max_size=3)}), max_size=3)


@FUZZ
@given(json_inputs(episode_documents))
def test_episode_files(data):
    outcome = bounded(_episodes, data, ".json", (GFSSError,))
    assert isinstance(outcome, (dict, GFSSError))


result_documents = st.fixed_dictionaries(
    {"run_id": st.text(max_size=4) | values, "schema_version": st.sampled_from([1, 2, 3]) | values,
     "spec": st.fixed_dictionaries({"method": st.just("diam") | values, "benchmark": st.just("x") | values,
                                    "fold": st.just(0) | values, "shot": st.just(1) | values,
                                    "protocol": st.just("standard"), "convention": st.just("diam"),
                                    "segmenter": st.just("builtin"), "runs": st.just(1), "seed": st.just(0),
                                    "method_options": st.just({}) | values}) | values,
     "aggregate": st.just({"base": {"mean": 0.5, "std": 0.0}}) | values,
     "runs": st.just([{"run": 0, "scores": {"base": 0.5}, "confusion": [[1]]}]) | values,
     "class_names": st.just(["background"]) | values})


def _result(path):
    """A stored result as the runner would write it (with a valid checksum, so the checks behind it are reached)."""
    store = ResultStore(path.parent)
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict):
        document.pop("checksum", None)
        store.save(dict(document, run_id="fuzzed"))  # save sets the schema version and the checksum
        path = store.path_for("fuzzed")
    result = store.load(path)
    assert result_problem(result) is None
    results, problems = store.load_all()
    assert len(results) + len(problems) >= 1
    return result


@FUZZ
@given(json_inputs(result_documents))
def test_result_files(data):
    outcome = bounded(_result, data, ".json", (ValueError,))
    assert isinstance(outcome, (dict, ValueError))
