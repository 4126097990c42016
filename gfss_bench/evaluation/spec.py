"""The run spec: everything that determines a result. Its canonical-JSON hash is the run id, the cache key and the
result file name, so any change of a number (preprocessing, sampling, a method's numerics) must change a field:
`PROTOCOL_VERSION` for the evaluation, `Method.version` for a method.

Every setting is validated here, once (`validate_settings`, which `RunSpec.create` and the spec builder call), with
one-line errors that name the option and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

from gfss_bench.data.episodes import check_episodes
from gfss_bench.errors import GFSSError, resolve_option
from gfss_bench.metrics import CONVENTIONS
from gfss_bench.methods import METHODS, Method, build_method
from gfss_bench.models.families import BUILTIN as BUILTIN_SEGMENTER
from gfss_bench.models.features import PRECISIONS
from gfss_bench.models.zoo import config_hash
from gfss_bench.protocols import EvaluationSettings, get_benchmark, get_protocol
from gfss_bench.results.store import canonical_json
from gfss_bench.userfiles import quote

DEFAULT_SEED = 2023
DEFAULT_RUNS = 5
# Version of the evaluation protocol, part of every run spec. 2: OpenCV preprocessing and the official support
# sampler (docs/protocol.md §4a). 3: the official repeats of short classes (from the run's whole support list) and,
# with a query cap (COCO), the official DataLoader's query batches. Results stored before version 2 lack the field
# and count as version 1.
PROTOCOL_VERSION = 3


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
    evaluation: Optional[EvaluationSettings] = None  # filled by `create` with the benchmark's official values
    feature_precision: str = "fp32"  # autocast dtype of the feature extraction: fp32, fp16 or bf16
    feature_cache: bool = False  # features went through the float16 on-disk cache (--feature-cache)
    episodes: str = "diam"  # support sampler: diam (official), independent, or file:<digest> (run --episodes FILE)
    protocol_version: int = PROTOCOL_VERSION
    method_version: int = 1  # filled by `create` with the method's `version`
    benchmark_digest: Optional[str] = None  # filled by `create` for a YAML or plugin benchmark: its definition's hash
    # Filled by `create` for the built-in segmenter: the config hash of its training recipe (`zoo.config_hash`), so
    # that retrained shipped weights give new run ids. Left out of the id when None (every other segmenter id
    # already follows its weights), so the ids of other specs are those of the versions before the field.
    builtin_config: Optional[str] = None

    @classmethod
    def create(cls, method: str, benchmark: str, fold: int, protocol: str, shot: int,
               options: Optional[dict[str, Any]] = None, evaluation: Optional[dict[str, Any]] = None,
               **kwargs: Any) -> "RunSpec":
        """Validate every field and fill the method's full option set and the evaluation settings (the
        benchmark's official values, overridden by `evaluation`)."""
        validate_settings(methods=[method], protocols=[protocol], shots=[shot], runs=kwargs.get("runs", DEFAULT_RUNS),
                          conventions=[kwargs.get("convention", "diam")],
                          feature_precision=kwargs.get("feature_precision", "fp32"),
                          episodes=kwargs.get("episodes", "diam"))
        built = build_method(method, **(options or {}))
        bench = get_benchmark(benchmark)
        bench.check_fold(fold)
        builtin = kwargs.get("segmenter", BUILTIN_SEGMENTER) == BUILTIN_SEGMENTER
        return cls(method, _freeze(built.options()), benchmark, fold, protocol, shot,
                   evaluation=bench.evaluation_settings(**(evaluation or {})), method_version=type(built).version,
                   benchmark_digest=bench.digest,
                   builtin_config=config_hash(benchmark, fold, protocol) if builtin else None, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["method_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.method_options}
        if data["builtin_config"] is None:
            del data["builtin_config"]
        return data

    @property
    def run_id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]

    def build(self) -> Method:
        return build_method(self.method, **dict(self.method_options))

    @property
    def data_key(self) -> tuple:
        """Specs with equal keys share the segmenter and the features."""
        return (self.benchmark, self.fold, self.protocol, self.segmenter, self.device, self.evaluation.image_size,
                self.evaluation.support_source, self.feature_precision, self.feature_cache)

    def episode_key(self, run: int) -> tuple:
        """Specs with equal keys see the same episode in run `run`."""
        return (self.shot, self.seed, run, self.evaluation, self.episodes)


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GFSSError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise GFSSError(f"--device {quote(name)} is unknown; choose from: auto, cpu, cuda")
    return torch.device(name)


def check_at_least_one(option: str, value: Optional[int]) -> None:
    """A count option (--shot, --runs, --batch-size, --steps) must be >= 1 when given."""
    if value is not None and value < 1:
        raise GFSSError(f"{option} must be >= 1, got {quote(value)}")


def validate_settings(*, methods: Iterable[str] = (), protocols: Iterable[str] = (), shots: Iterable[int] = (),
                      runs: Optional[int] = None, conventions: Iterable[str] = (),
                      feature_precision: Optional[str] = None, episodes: Optional[str] = None) -> None:
    """The one check of the run settings that do not need the data: names exist, counts are positive."""
    for method in methods:
        resolve_option("--method", METHODS.get, method)
    for protocol in protocols:
        resolve_option("--protocol", get_protocol, protocol)
    for shot in shots:
        check_at_least_one("--shot", shot)
    check_at_least_one("--runs", runs)
    for convention in conventions:
        if convention not in CONVENTIONS:
            raise GFSSError(f"--convention {quote(convention)} is unknown; choose from: {', '.join(CONVENTIONS)}")
    if feature_precision is not None and feature_precision not in PRECISIONS:
        raise GFSSError(f"--feature-precision {quote(feature_precision)} is unknown; choose from: "
                        f"{', '.join(PRECISIONS)}")
    if episodes is not None:
        check_episodes(episodes)
