"""Protocols (standard / practical) and benchmarks (folds and class splits)."""

from gfss_bench.protocols.benchmark_files import resolve_benchmark
from gfss_bench.protocols.catalog import (
    BENCHMARKS, Benchmark, EvaluationSettings, get_benchmark, register_benchmark, scaled_min_support_pixels)
from gfss_bench.protocols.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "BENCHMARKS", "Benchmark", "EvaluationSettings", "get_benchmark", "register_benchmark", "resolve_benchmark",
    "scaled_min_support_pixels",
    "PROTOCOLS", "Protocol", "get_protocol",
]
