"""Hand-built result dicts with the runner's layout and real confusion matrices.

Class c (1..B+N) of run r gets IoU exactly p/100 for a chosen integer percent p: its confusion row
holds p pixels predicted correctly and 100 - p predicted as background, and nothing else is ever
predicted as c. A class given None has no pixels at all in that run (empty union: skipped).
"""

import hashlib
import json

import numpy as np

from gfss_bench.evaluation.spec import PROTOCOL_VERSION
from gfss_bench.metrics import CONVENTIONS, scores
from gfss_bench.protocols import BENCHMARKS

PROVENANCE = {"git_commit": "0123456789abcdef0123", "created": "2025-01-02T03:04:05+00:00", "device": "cpu",
              "device_name": "x86_64", "versions": {}, "wall_time_s": 1.0}


def _per_run(value, runs):
    return list(value) if isinstance(value, (list, tuple)) else [value] * runs


def confusion_for(percents: list) -> np.ndarray:
    """percents[c-1] is the IoU (percent) of class c; background gets 1000 correct pixels."""
    size = len(percents) + 1
    confusion = np.zeros((size, size), dtype=np.int64)
    confusion[0, 0] = 1000
    for c, p in enumerate(percents, start=1):
        if p is None:
            continue
        confusion[c, c] = p
        confusion[c, 0] = 100 - p
    return confusion


def make_result(method, fold, base, novel, *, runs=5, overrides=None, options=None, benchmark="synthetic5i",
                shot=1, protocol="practical", convention="diam", seed=2023, segmenter="builtin", oracle=False,
                provenance=None, supports=None, spec_extra=None, extra=None):
    """A result as the runner writes it; `spec_extra` adds spec fields (versions), `extra` top-level ones
    (e.g. method_label, benchmark_info). Without them it has the layout of results stored before those."""
    bench = BENCHMARKS.get(benchmark)
    num_base, num_novel = len(bench.base_classes(fold)), len(bench.novel_classes(fold))
    base, novel = _per_run(base, runs), _per_run(novel, runs)
    overrides = overrides or {}
    spec = {"method": method, "method_options": dict(options or {}), "benchmark": benchmark, "fold": fold,
            "protocol": protocol, "shot": shot, "runs": runs, "seed": seed, "convention": convention,
            "segmenter": segmenter, "device": "cpu", **(spec_extra or {})}
    run_records = []
    for r in range(runs):
        percents = [base[r]] * num_base + [novel[r]] * num_novel
        for (run, c), value in overrides.items():
            if run == r:
                percents[c - 1] = value
        confusion = confusion_for(percents)
        run_records.append({
            "run": r, "seed": 1000 * fold + 10 * shot + r, "num_queries": 7,
            "support_images": supports[r] if supports else [[f"img{fold}_{r}_{n}"] for n in range(num_novel)],
            "confusion": confusion.tolist(), "scores": scores(confusion, num_base, convention).as_dict()})
    aggregate = {}
    for key in run_records[0]["scores"]:
        values = np.array([rec["scores"][key] for rec in run_records], dtype=np.float64)
        if np.isnan(values).all():
            aggregate[key] = {"mean": float("nan"), "std": float("nan")}
        else:
            aggregate[key] = {"mean": float(np.nanmean(values)),
                              "std": float(np.nanstd(values, ddof=1)) if runs > 1 else 0.0}
    run_id = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {"run_id": run_id, "spec": spec, "oracle": oracle, "convention": convention,
            "convention_description": CONVENTIONS[convention],
            "class_ids": list(bench.episode_classes(fold)), "class_names": list(bench.episode_class_names(fold)),
            "num_base": num_base, "num_novel": num_novel, "runs": run_records, "aggregate": aggregate,
            "provenance": dict(provenance or PROVENANCE), **(extra or {})}


CURRENT = {"protocol_version": PROTOCOL_VERSION, "method_version": 1, "episodes": "diam"}


def two_methods(**kwargs):
    """diam and imprint on all 4 folds of synthetic5i: base 60+r+f / 50, novel 30+2r / 20+r (percent)."""
    results = []
    for fold in range(4):
        results.append(make_result("diam", fold, [60 + r + fold for r in range(5)], [30 + 2 * r for r in range(5)],
                                   **kwargs))
        results.append(make_result("imprint", fold, 50, [20 + r for r in range(5)], **kwargs))
    return results
