"""A 12-image benchmark from a YAML file (the 6-class VOC-layout folder of tests/test_yaml_benchmark.py, 41-pixel
inputs), for runner tests that need real data but not the 2500-image synthetic dataset."""

import hashlib
from pathlib import Path

from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.protocols import resolve_benchmark
from tests.test_yaml_benchmark import MIN_SUPPORT_PIXELS, bench_yaml, write_voc


def toy_benchmark(folder: Path) -> str:
    """Write the data and the benchmark file under `folder`, register it (named after the folder's path, so every
    test gets its own) and return its name."""
    name = "toy-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    write_voc(folder / "data", "val", 12, seed=1)
    path = folder / f"{name}.yaml"
    path.write_text(bench_yaml(name, data_root="data", image_size=41, min_support_pixels=MIN_SUPPORT_PIXELS))
    return resolve_benchmark(str(path)).name


def toy_spec(benchmark: str, method: str = "imprint", **kwargs) -> RunSpec:
    return RunSpec.create(method, benchmark, 0, "practical", 1, runs=kwargs.pop("runs", 1), **kwargs)
