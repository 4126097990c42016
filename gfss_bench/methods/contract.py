"""The contract every GFSS method implements: a `Task` in, softmax probabilities out.

Methods are dataclasses whose fields are their options (with the published defaults), registered
by name; `build_method(name, **options)` validates and coerces the options (strings from the CLI
included) and fails with a clear message on unknown names, unknown options or wrong types.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from gfss_bench.errors import GFSSError
from gfss_bench.registry import Registry, unknown_choice_message


@dataclass
class Task:
    """One GFSS adaptation problem: a frozen base classifier, a support set and a batch of queries.

    Labels are in the episode space: 0 background, 1..B base, B+1..B+N novel, 255 ignore.
    `support_labels[j]` are the K masks of novel class j (episode label B+1+j). Code that splits a task's
    queries splits `query_seeds` with them; `query_seeds_of()` gives the per-query seeds in either case.
    """

    base_weight: torch.Tensor  # float [C, B+1]
    base_bias: torch.Tensor  # float [B+1]
    support_features: torch.Tensor  # float [N, K, C, h, w]
    support_labels: torch.Tensor  # long [N, K, H, W]
    query_features: torch.Tensor  # float [Q, C, h, w]
    query_valid: torch.Tensor  # bool [Q, H, W]
    query_labels: Optional[torch.Tensor] = None  # long [Q, H, W]; only oracle settings may read it
    seed: int = 0  # for methods with randomness; derived from the run's seed by the runner
    # The evaluation's seed (the spec's, 2023 by default), for methods whose draws replay a stream that the official
    # code seeds once per evaluation and continues across its runs (bcm; see Method.stream_state).
    evaluation_seed: int = 0
    # int64 [Q]: one seed per query, for methods that draw per query (classtrans). The runner derives it from the
    # run's seed and the query image's index in the val list, so draws do not depend on batching or query order.
    # None: query i of the task uses seed + i. (torch's CPU generator reads only the low 32 bits of a seed.)
    query_seeds: Optional[torch.Tensor] = None
    segmenter: str = ""  # the base segmenter's name (`SegmenterFamily.label`), for methods' messages

    @property
    def num_base_and_bg(self) -> int:
        return self.base_weight.shape[1]

    @property
    def num_novel(self) -> int:
        return self.support_features.shape[0]

    @property
    def num_classes(self) -> int:
        return self.num_base_and_bg + self.num_novel

    @property
    def shots(self) -> int:
        return self.support_features.shape[1]

    def query_seeds_of(self) -> list[int]:
        """One seed per query: `query_seeds` when given, else `seed + i` for query i."""
        count = self.query_features.shape[0]
        if self.query_seeds is None:
            return [self.seed + i for i in range(count)]
        seeds = [int(s) for s in self.query_seeds.reshape(-1).tolist()]
        if len(seeds) != count:
            raise GFSSError(f"query_seeds holds {len(seeds)} seeds for {count} queries")
        return seeds


class Fitted:
    """What `Method.fit` returns: predicts query batches that share the support set it was fitted on.

    `predict(task)` reads the query fields of `task` (its support fields are those given to `fit`).
    """

    def predict(self, task: Task) -> torch.Tensor:
        raise NotImplementedError


class _PerBatch(Fitted):
    """The default fit: nothing is fitted ahead; every batch is the method's own `predict`."""

    def __init__(self, method: "Method"):
        self.method = method

    def predict(self, task: Task) -> torch.Tensor:
        return self.method.predict(task)


class Method:
    """Base class of registered methods (subclasses are dataclasses of their options).

    Two entry points, with identical results: `predict(task)` for one task, and `fit(task)` once per
    support set followed by `Fitted.predict(task)` for each query batch (what the runner does).
    `fit` may read only the base classifier, the support fields and the seeds of its task (the runner
    passes a task with zero queries). The runner builds one method object per evaluation and fits it on the runs
    in order, so a method may continue a random stream across runs; it then exposes the stream's state
    (`stream_state`, `restore_stream_state`) for the run checkpoints. A method implements `predict` (transductive methods, which adapt
    per query batch; `fit` then defers to it) or `fit` (inductive methods; `predict` then fits and
    predicts).

    Output: probabilities [Q, B+1+N, h, w] at feature resolution, which the runner upsamples
    (bilinear, align_corners=True) to the label size before the argmax, or [Q, B+1+N, H, W] at the
    label size of `query_valid`, which the runner scores as they are.
    """

    name: ClassVar[str] = ""
    # Version of the method's numerics: bump it whenever a change alters the method's outputs, so that the run id
    # changes and no result of the old code is served as a cache hit (see RunSpec.method_version).
    version: ClassVar[int] = 1

    @property
    def is_oracle(self) -> bool:
        """True when the method reads ground truth of the queries (results are flagged as oracle)."""
        return False

    def validate(self) -> None:
        """Check option values; raise GFSSError naming the option and what is allowed."""

    def fit(self, task: Task) -> Fitted:
        """Fit on the task's support set; the default fits nothing and predicts batch by batch."""
        return _PerBatch(self)

    def predict(self, task: Task) -> torch.Tensor:
        """Probabilities [Q, B+1+N, h, w] (or [Q, B+1+N, H, W]) for the task's queries."""
        if type(self).fit is Method.fit:
            raise NotImplementedError(f"method {self.name!r} implements neither predict nor fit")
        return self.fit(task).predict(task)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def stream_state(self) -> Any:
        """JSON-able state of a random stream that this object continues across the runs of an evaluation (None
        when there is none, or before the first fit). The runner stores it with each run checkpoint, so that an
        evaluation resumed at run r draws exactly as an uninterrupted one."""
        return None

    def restore_stream_state(self, state: Any) -> None:
        """Continue from a `stream_state` of a checkpoint; ValueError when it is not one of this method's."""
        if state is not None:
            raise ValueError(f"method {self.name!r} has no random stream to restore")


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: make a dataclass of options and register it under `name`."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls = dataclass(frozen=True)(cls)
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return decorator


def check_option_name(name: str, key: str) -> None:
    """A GFSSError with a "did you mean" when the registered method `name` has no option `key`."""
    fields = sorted(f.name for f in dataclasses.fields(METHODS.get(name)))
    if key not in fields:
        raise GFSSError(unknown_choice_message(f"option for method {name!r}:", key, fields))


def build_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method; options may be Python values or CLI strings."""
    cls = METHODS.get(name)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in options.items():
        check_option_name(name, key)
        values[key] = coerce_option(name, key, value, hints[key])
    method = cls(**values)
    method.validate()
    return method


def _scalar(method: str, key: str, value: Any, kind: type) -> Any:
    problem = f"option {key!r} of method {method!r} must be {kind.__name__}, got {value!r}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise GFSSError(problem)
    if kind in (int, float):
        if isinstance(value, bool):
            raise GFSSError(problem)
        if isinstance(value, (int, float)) and (kind is float or float(value).is_integer()):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                raise GFSSError(problem) from None
        raise GFSSError(problem)
    if kind is str:
        if isinstance(value, str):
            return value
        raise GFSSError(problem)
    raise TypeError(f"unsupported option type {kind}")


def coerce_option(method: str, key: str, value: Any, hint: Any) -> Any:
    """Coerce a value to the option's annotated type: bool/int/float/str or tuple[...] of them."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_types = [t for t in typing.get_args(hint) if t is not Ellipsis]
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        if Ellipsis not in args and len(value) != len(args):
            raise GFSSError(f"option {key!r} of method {method!r} needs {len(args)} comma-separated values, "
                            f"got {value!r}")
        kinds = item_types * len(value) if Ellipsis in args else item_types
        return tuple(_scalar(method, key, v, k) for v, k in zip(value, kinds))
    return _scalar(method, key, value, hint)


def check_choice(method: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GFSSError(unknown_choice_message(f"value for option {key!r} of method {method!r}:", value,
                                               list(choices)))
