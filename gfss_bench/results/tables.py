"""Tables from stored results, as data (pandas), for every renderer: fold-level rows, fold means per method
setting, run rows and per-class IoU.

Fold means: base and novel mIoU are averaged over folds (each fold's value is its mean over runs),
then mean = (base + novel) / 2 and HM = 2*base*novel/(base + novel) of those averages, as papers do.
Rows with fewer folds than the benchmark has are marked incomplete, never passed off as complete.
Results of different metric conventions are never mixed in one table, and results of different protocol
versions, method versions or episode samplers never share a row (`describe.versions`).
A row's segmenter is the one the user chose (`describe.segmenter_label`: one row for all folds of a checkpoint
folder); each fold's exact weights id stays in the `segmenter_id` column of the fold and run rows, and the row
lists them (`segmenter_ids`). A row holding a fold more than once (e.g. weights retrained in the same folder, or
other evaluation settings) is not complete.

Labels, fold counts and versions come from the stored results (`describe`), never from the registries.

Spread over runs ("± std"): run r of every fold of a row forms one replicate of the whole
benchmark; its base and novel mIoU are the fold means of run r's scores and its mean/HM follow
from them. The std (ddof=1) over those replicates is reported; only run indices present in every
fold of the row are used. Results stored without per-run scores get no std (NaN).

Per-class IoU: for each fold, the IoU of each episode class in each run (from the run's stored
confusion matrix; classes with an empty union skipped), averaged over the runs where it is defined.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from gfss_bench.metrics import harmonic_mean, per_class_iou
from gfss_bench.results.describe import described, num_folds, result_label, segmenter_label, versions


GROUP_COLUMNS = ["benchmark", "protocol", "convention", "shot"]
METRICS = ["base_miou", "novel_miou", "mean_miou", "hm_miou"]
ALL_METRICS = METRICS + ["total_miou"]
METRIC_NAMES = {"base": "base_miou", "novel": "novel_miou", "mean": "mean_miou", "hm": "hm_miou",
                "total": "total_miou"}
METRIC_TITLES = {"base_miou": "base", "novel_miou": "novel", "mean_miou": "mean", "hm_miou": "HM",
                 "total_miou": "total"}
VERSION_COLUMNS = ["protocol_version", "method_version", "episodes"]
SETTING_COLUMNS = ["method", "method_name", "segmenter", "runs", "seed", "oracle", "evaluation"] + VERSION_COLUMNS


def evaluation_setting(spec: dict) -> str:
    """The evaluation settings and feature precision of a spec as one sorted 'key=value,...' string: results that
    differ in it (another --queries, --image-size, --feature-precision, ...) never share a row."""
    settings = dict(spec.get("evaluation") or {})
    settings.update(feature_precision=spec.get("feature_precision", "fp32"),
                    feature_cache=spec.get("feature_cache", False))
    return ",".join(f"{key}={settings[key]}" for key in sorted(settings))


def _setting(result: dict) -> dict:
    """The columns that identify a result's row: its label, method name, segmenter label, runs, seed and
    versions."""
    spec = result["spec"]
    return {"method": result_label(result), "method_name": spec["method"], "segmenter": segmenter_label(result),
            "runs": spec["runs"], "seed": spec["seed"], "oracle": bool(result.get("oracle")),
            "evaluation": evaluation_setting(spec), **versions(result)}


def filter_results(results: Iterable[dict], benchmarks: Sequence[str] = (), protocols: Sequence[str] = (),
                   shots: Sequence[int] = (), methods: Sequence[str] = (),
                   conventions: Sequence[str] = ()) -> list[dict]:
    """Keep results matching every given filter (an empty filter keeps all). A method filter matches
    either the method name (`diam`, every option setting) or the full label (`diam(pi_strategy=uniform)`).
    The kept results are `described` (labels of old results computed over all the given ones)."""
    kept = []
    for result in described(results):
        spec = result["spec"]
        if benchmarks and spec["benchmark"] not in benchmarks:
            continue
        if protocols and spec["protocol"] not in protocols:
            continue
        if shots and spec["shot"] not in shots:
            continue
        if conventions and spec["convention"] not in conventions:
            continue
        if methods and spec["method"] not in methods and result_label(result) not in methods:
            continue
        kept.append(result)
    return kept


def _pct(aggregate: dict, key: str, field: str = "mean") -> float:
    value = aggregate.get(key, {}).get(field)
    return float("nan") if value is None else 100 * float(value)


def _provenance(result: dict) -> dict:
    record = result.get("provenance") or {}
    return {"git_commit": record.get("git_commit"), "created": record.get("created"),
            "device": record.get("device_name") or record.get("device")}


def fold_rows(results: Iterable[dict]) -> pd.DataFrame:
    """One row per stored result (method x benchmark x fold x protocol x shot ...), mIoU in percent.

    base/novel/total are the means over runs; mean and HM of a fold are computed from its base and
    novel means; the std columns are the stored std over runs (ddof=1)."""
    rows = []
    for result in described(results):
        spec, aggregate = result["spec"], result["aggregate"]
        base, novel = _pct(aggregate, "base"), _pct(aggregate, "novel")
        rows.append({
            **_setting(result), "benchmark": spec["benchmark"], "protocol": spec["protocol"],
            "convention": spec["convention"], "shot": spec["shot"], "fold": spec["fold"],
            "num_folds": num_folds(result), "base_miou": base, "novel_miou": novel, "mean_miou": (base + novel) / 2,
            "hm_miou": harmonic_mean(base, novel), "total_miou": _pct(aggregate, "total"),
            "base_std": _pct(aggregate, "base", "std"), "novel_std": _pct(aggregate, "novel", "std"),
            "mean_std": _pct(aggregate, "mean", "std"), "hm_std": _pct(aggregate, "hm", "std"),
            "total_std": _pct(aggregate, "total", "std"),
            "segmenter_id": spec["segmenter"], "run_id": result["run_id"], **_provenance(result),
        })
    columns = SETTING_COLUMNS + ["benchmark", "protocol", "convention", "shot", "fold", "num_folds", "base_miou",
                                 "novel_miou", "mean_miou", "hm_miou", "total_miou", "base_std", "novel_std",
                                 "mean_std", "hm_std", "total_std", "segmenter_id", "run_id", "git_commit",
                                 "created", "device"]
    return pd.DataFrame(rows, columns=columns)


def run_rows(results: Iterable[dict]) -> pd.DataFrame:
    """Tidy table: one row per method x fold x run with that run's scores (percent) and provenance."""
    rows = []
    for result in described(results):
        spec = result["spec"]
        for run in result.get("runs", []):
            run_scores = run.get("scores", {})
            value = {k: (float("nan") if run_scores.get(k) is None else 100 * float(run_scores[k]))
                     for k in ("base", "novel", "mean", "hm", "total")}
            rows.append({
                **_setting(result), "method_options": spec["method_options"],
                "benchmark": spec["benchmark"], "protocol": spec["protocol"], "convention": spec["convention"],
                "shot": spec["shot"], "fold": spec["fold"], "run": run["run"], "seed": run.get("seed"),
                "num_queries": run.get("num_queries"),
                "base_miou": value["base"], "novel_miou": value["novel"], "mean_miou": value["mean"],
                "hm_miou": value["hm"], "total_miou": value["total"], "segmenter_id": spec["segmenter"],
                "run_id": result["run_id"], **_provenance(result),
            })
    columns = ["method", "method_name", "method_options", "benchmark", "protocol", "convention", "shot", "fold",
               "run", "seed", "num_queries", "segmenter", "oracle", *VERSION_COLUMNS, "base_miou", "novel_miou",
               "mean_miou", "hm_miou", "total_miou", "segmenter_id", "run_id", "git_commit", "created", "device"]
    return pd.DataFrame(rows, columns=columns)


def _nan_std(values: Sequence[float]) -> float:
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    return float(values.std(ddof=1)) if values.size > 1 else float("nan")


def _replicate_std(runs: pd.DataFrame, folds: Sequence[int]) -> dict[str, float]:
    """Std over run indices of the fold-mean scores (see the module docstring)."""
    nan = float("nan")
    if runs.empty:
        return {f"{m}_std": nan for m in ("base", "novel", "mean", "hm", "total")}
    by_run = runs.groupby("run")
    replicates = {"base": [], "novel": [], "mean": [], "hm": [], "total": []}
    for _, group in by_run:
        if sorted(group["fold"].unique()) != sorted(folds):
            continue
        base, novel = group["base_miou"].mean(), group["novel_miou"].mean()
        replicates["base"].append(base)
        replicates["novel"].append(novel)
        replicates["mean"].append((base + novel) / 2)
        replicates["hm"].append(harmonic_mean(base, novel))
        replicates["total"].append(group["total_miou"].mean())
    return {f"{m}_std": _nan_std(v) for m, v in replicates.items()}


def leaderboard(results: Iterable[dict]) -> pd.DataFrame:
    """Fold means per (benchmark, protocol, convention, shot, method, setting), with std over runs and
    provenance (the fold weights' ids, distinct commits and devices, latest creation date)."""
    results = list(results)
    folds = fold_rows(results)
    runs = run_rows(results)
    keys = GROUP_COLUMNS + SETTING_COLUMNS
    columns = keys + ["folds", "num_folds", "complete"] + ALL_METRICS + [f"{m[:-5]}_std" for m in ALL_METRICS] \
        + ["segmenter_ids", "git_commit", "created", "device"]
    if folds.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in folds.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        known = group["num_folds"].dropna()
        expected = int(known.max()) if not known.empty else None
        base, novel = group["base_miou"].mean(), group["novel_miou"].mean()
        fold_ids = sorted(group["fold"])
        row.update(folds=",".join(str(f) for f in fold_ids), num_folds=expected,
                   complete=expected is not None and group["fold"].nunique() == expected == len(group),
                   base_miou=base, novel_miou=novel, mean_miou=(base + novel) / 2,
                   hm_miou=harmonic_mean(base, novel), total_miou=group["total_miou"].mean())
        mine = runs[runs["run_id"].isin(set(group["run_id"]))] if not runs.empty else runs
        row.update(_replicate_std(mine, fold_ids))
        row.update(segmenter_ids=",".join(dict.fromkeys(group.sort_values("fold", kind="stable")["segmenter_id"])),
                   git_commit=",".join(sorted({str(c)[:10] for c in group["git_commit"] if c})),
                   created=max((c for c in group["created"] if c), default=None),
                   device=",".join(sorted({str(d) for d in group["device"] if d})))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def sort_board(board: pd.DataFrame, metric: str = "hm") -> pd.DataFrame:
    """Order rows by a metric (best first) or by method name; NaN last."""
    if metric == "method":
        return board.sort_values("method", kind="stable")
    column = METRIC_NAMES.get(metric, metric)
    if column not in board.columns:
        raise ValueError(f"cannot sort by {metric!r}; choose method, {', '.join(METRIC_NAMES)}")
    return board.sort_values(column, ascending=False, kind="stable", na_position="last")


def group_metrics(convention: str) -> list[str]:
    """Metric columns of a table: POP-convention tables add the total mIoU."""
    return ALL_METRICS if convention == "pop" else METRICS


def row_marks(frame: pd.DataFrame) -> tuple[list[str], list[bool]]:
    """The shown label and the older-version flag of each row of a frame with the setting columns.

    The label is the method label plus ' [oracle]', ' @SEGMENTER' (other than the built-in), ' [protocol vN]'
    when N is older than the newest protocol version in the frame, ' [method vN]' when the frame holds
    several versions of that method, and ' [episodes=X]' when the rows of the newest protocol version use
    several episode samplers, and ' [setting=value,...]' for the evaluation settings that differ among the rows of
    its table. A row of an older protocol or method version is 'older': never bold."""
    if frame.empty:
        return [], []
    newest_protocol = frame["protocol_version"].max()
    newest_method = frame.groupby("method_name")["method_version"].max()
    method_versions = frame.groupby("method_name")["method_version"].nunique()
    current = frame[frame["protocol_version"] == newest_protocol]
    several_samplers = current["episodes"].nunique() > 1
    differing = {key: _differing_settings(group["evaluation"]) for key, group in frame.groupby(GROUP_COLUMNS)}
    labels, older = [], []
    for _, row in frame.iterrows():
        label = str(row["method"]) + (" [oracle]" if row["oracle"] else "")
        if row["segmenter"] != "builtin":
            label += f" @{row['segmenter']}"
        if method_versions[row["method_name"]] > 1:
            label += f" [method v{row['method_version']}]"
        if row["protocol_version"] < newest_protocol:
            label += f" [protocol v{row['protocol_version']}]"
        elif several_samplers:
            label += f" [episodes={row['episodes']}]"
        shown = differing[tuple(row[column] for column in GROUP_COLUMNS)]
        if shown:
            label += " [" + ",".join(item for item in row["evaluation"].split(",") if item.split("=")[0] in shown) + "]"
        labels.append(label)
        older.append(bool(row["protocol_version"] < newest_protocol
                          or row["method_version"] < newest_method[row["method_name"]]))
    return labels, older


def _differing_settings(settings: pd.Series) -> set[str]:
    """The evaluation setting names whose values differ among the rows (shown in their labels)."""
    values: dict[str, set[str]] = {}
    for setting in settings:
        for item in setting.split(","):
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: float, std: Optional[float] = None) -> str:
    if _is_nan(value):
        return "-"
    text = f"{value:.2f}"
    if std is not None and not _is_nan(std):
        text += f" ± {std:.2f}"
    return text


CONVENTION_TITLES = {  # the metric convention as titles name it: never just "diam", which is also a method
    "diam": "mIoU without background",
    "pop": "mIoU with background as a base class",
}


def convention_title(convention: str) -> str:
    """What a metric convention (`--convention`) measures, in words."""
    return CONVENTION_TITLES.get(convention, f"{convention} metric convention")


def sampler_title(episodes: str) -> str:
    """The episode sampler as titles name it."""
    if episodes == "diam":
        return "official episode sampler"
    if str(episodes).startswith("file:"):
        return f"episodes from file {str(episodes)[5:17]}"
    return f"{episodes} episode sampler"


def signed_text(value: float) -> str:
    """A difference with its sign and 2 decimals; one that rounds to zero is '0.00', never '-0.00'."""
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def group_title(benchmark: str, protocol: str, convention: str, shot) -> str:
    """The one title of a (benchmark, protocol, convention, shot) group, in every output."""
    return f"{benchmark}, {protocol} protocol, {shot}-shot, {convention_title(convention)}"


def per_class_frame(results: Iterable[dict]) -> pd.DataFrame:
    """Tidy per-class IoU (percent): one row per result x episode class, averaged over runs."""
    rows = []
    for result in described(results):
        spec = result["spec"]
        runs = [r for r in result.get("runs", []) if r.get("confusion") is not None]
        names = result.get("class_names")
        if not runs or names is None:
            continue
        ious = np.stack([per_class_iou(np.asarray(r["confusion"])) for r in runs])
        num_base = result.get("num_base", 0)
        ids = result.get("class_ids") or list(range(len(names)))
        for index, name in enumerate(names):
            column = ious[:, index]
            defined = column[~np.isnan(column)]
            role = "background" if index == 0 else ("base" if index <= num_base else "novel")
            rows.append({
                **_setting(result), "benchmark": spec["benchmark"], "protocol": spec["protocol"],
                "convention": spec["convention"], "shot": spec["shot"], "fold": spec["fold"], "class_index": index,
                "class_id": ids[index],
                "class_name": name, "role": role,
                "iou": 100 * float(defined.mean()) if defined.size else float("nan"),
                "runs_defined": int(defined.size),
            })
    columns = SETTING_COLUMNS + ["benchmark", "protocol", "convention", "shot", "fold", "class_index", "class_id",
                                 "class_name", "role", "iou", "runs_defined"]
    return pd.DataFrame(rows, columns=columns)


def per_class_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """One fold's per-class frame as a (class x method) matrix, classes in episode order; the index holds
    (class_index, class_id, class_name, role)."""
    frame = frame.assign(label=row_marks(frame)[0])
    labels = list(dict.fromkeys(frame["label"]))
    matrix = frame.pivot_table(index="class_index", columns="label", values="iou", aggfunc="first",
                               dropna=False).reindex(columns=labels)
    classes = frame.drop_duplicates("class_index").set_index("class_index").sort_index()
    matrix = matrix.reindex(classes.index)
    matrix.index = pd.MultiIndex.from_arrays(
        [classes.index, classes["class_id"], classes["class_name"], classes["role"]],
        names=["class_index", "class_id", "class_name", "role"])
    matrix.columns.name = None
    return matrix
