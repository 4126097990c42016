"""What a result says about itself: its method label, its benchmark and its versions.

Reports read these from the stored results only, never from the current method or benchmark registries,
so results of a plugin that is no longer installed, or of a YAML benchmark that is not registered, still
show, and a changed default never relabels old rows. Results written from schema version 2 on carry
`method_label` and `benchmark_info` (see `self_description`, called by the runner); from schema version 3 on
also `segmenter_label`, the segmenter the user chose over all folds (`builtin`, `pspnet:/abs/model_ckpt`), which
keys report rows, while `spec.segmenter` keeps each fold's exact weights id (`checkpoint:<sha>`, in the run id).

Results stored before (schema version 1) fall back to what they hold:
- label: the method name plus the options whose values differ among the stored results of that method
  (the same method with two option settings gets two labels; one setting alone shows the bare name);
- number of folds: (base + novel classes) / novel classes per fold, which holds for equal splits such as
  every built-in benchmark; unknown (rows shown as incomplete, "n/?") when that does not divide;
- versions: protocol version 1, method version 1, episodes "independent" (the only sampler then);
- segmenter label (schema versions 1 and 2): `spec.segmenter`, so each fold of a checkpoint folder keeps its own row.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

LEGACY_PROTOCOL_VERSION = 1
LEGACY_METHOD_VERSION = 1
LEGACY_EPISODES = "independent"


def format_option(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(format_option(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_label(method: str, options: Mapping[str, Any]) -> str:
    """`method(k=v, ...)` with the given options sorted by name; the bare name when there are none."""
    shown = [f"{k}={format_option(v)}" for k, v in sorted(options.items())]
    return f"{method}({', '.join(shown)})" if shown else method


def method_label(method: str, options: Mapping[str, Any], defaults: Mapping[str, Any] = ()) -> str:
    """The method name plus the options that differ from `defaults`, e.g. `diam(pi_strategy=uniform)`.
    Options without a default in `defaults` are not shown."""
    defaults = dict(defaults)
    return format_label(method, {k: v for k, v in options.items()
                                 if k in defaults and format_option(v) != format_option(defaults[k])})


def benchmark_info(benchmark) -> dict:
    """The stored description of a benchmark (a `Benchmark`, read by attribute)."""
    return {"name": benchmark.name, "description": benchmark.description, "num_folds": benchmark.num_folds,
            "class_names": list(benchmark.class_names),
            "fold_novel_classes": [sorted(fold) for fold in benchmark.fold_novel_classes]}


def self_description(method: str, options: Mapping[str, Any], defaults: Mapping[str, Any], benchmark) -> dict:
    """The fields the runner adds to every result so that reports need no registry (schema version 2)."""
    return {"method_label": method_label(method, options, defaults), "benchmark_info": benchmark_info(benchmark)}


def _legacy_num_folds(result: dict) -> Optional[int]:
    base, novel = result.get("num_base"), result.get("num_novel")
    if not isinstance(base, int) or not isinstance(novel, int) or novel < 1 or (base + novel) % novel:
        return None
    return (base + novel) // novel


def _legacy_benchmark_info(result: dict) -> dict:
    """What a schema-1 result tells of its benchmark: the name, the inferred number of folds, and the names
    and novel classes of its own fold."""
    spec = result["spec"]
    ids, names = result.get("class_ids") or [], result.get("class_names") or []
    novel = ids[1 + result["num_base"]:] if "num_base" in result else []
    return {"name": spec["benchmark"], "description": None, "num_folds": _legacy_num_folds(result),
            "class_names": {str(i): n for i, n in zip(ids[1:], names[1:])},
            "fold_novel_classes": {str(spec["fold"]): sorted(novel)}}


def described(results: Iterable[dict]) -> list[dict]:
    """The results, each with `method_label` and `benchmark_info`; results stored without them get the
    fallbacks of the module docstring (computed over this whole list, so call it once on all loaded results:
    results that already carry both fields pass through unchanged)."""
    results = list(results)
    legacy = [r for r in results if "method_label" not in r]
    settings: dict[str, list[dict]] = {}
    for result in legacy:
        settings.setdefault(result["spec"]["method"], []).append(result["spec"].get("method_options") or {})
    varying = {name: {k for k in set().union(*options)
                      if len({format_option(o.get(k)) for o in options}) > 1}
               for name, options in settings.items()}
    out = []
    for result in results:
        if "method_label" in result and "benchmark_info" in result:
            out.append(result)
            continue
        spec = result["spec"]
        label = result.get("method_label") or format_label(
            spec["method"], {k: v for k, v in (spec.get("method_options") or {}).items()
                             if k in varying.get(spec["method"], ())})
        out.append(dict(result, method_label=label,
                        benchmark_info=result.get("benchmark_info") or _legacy_benchmark_info(result)))
    return out


def result_label(result: dict) -> str:
    """The stored method label (`described` fills it for old results; the bare method name otherwise)."""
    return result.get("method_label") or result["spec"]["method"]


def segmenter_label(result: dict) -> str:
    """The segmenter a report row shows and groups by: the stored label, else the spec's segmenter id."""
    return result.get("segmenter_label") or result["spec"]["segmenter"]


def num_folds(result: dict) -> Optional[int]:
    return (result.get("benchmark_info") or {}).get("num_folds") or _legacy_num_folds(result)


def versions(result: dict) -> dict:
    """protocol_version, method_version and episodes of a result's spec (older specs: the legacy values)."""
    spec = result["spec"]
    return {"protocol_version": int(spec.get("protocol_version", LEGACY_PROTOCOL_VERSION)),
            "method_version": int(spec.get("method_version", LEGACY_METHOD_VERSION)),
            "episodes": str(spec.get("episodes", LEGACY_EPISODES))}
