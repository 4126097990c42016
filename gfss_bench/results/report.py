"""Leaderboards from stored results: fold-level rows, fold means per method, rich tables and CSV.

Fold means: base and novel mIoU are averaged over folds (each fold's value is its mean over runs),
then mean = (base + novel) / 2 and HM = 2*base*novel/(base + novel) of those averages, as papers do.
Rows with fewer folds than the benchmark has are marked incomplete, never passed off as complete.
Results of different metric conventions are never mixed in one table.

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
from rich.console import Console
from rich.table import Table

from gfss_bench.benchmark.metrics import harmonic_mean, per_class_iou
from gfss_bench.methods import METHODS
from gfss_bench.protocols import BENCHMARKS

GROUP_COLUMNS = ["benchmark", "protocol", "convention", "shot"]
METRICS = ["base_miou", "novel_miou", "mean_miou", "hm_miou"]
ALL_METRICS = METRICS + ["total_miou"]
METRIC_NAMES = {"base": "base_miou", "novel": "novel_miou", "mean": "mean_miou", "hm": "hm_miou",
                "total": "total_miou"}
METRIC_TITLES = {"base_miou": "base", "novel_miou": "novel", "mean_miou": "mean", "hm_miou": "HM",
                 "total_miou": "total"}
SETTING_COLUMNS = ["method", "segmenter", "runs", "seed", "oracle"]


def method_label(method: str, options: dict) -> str:
    """The method name plus its non-default options, e.g. `diam(pi_strategy=uniform)`."""
    if method not in METHODS:
        return method
    defaults = METHODS.get(method)().options()
    changed = [f"{k}={_format_option(v)}" for k, v in sorted(options.items())
               if k in defaults and _format_option(v) != _format_option(defaults[k])]
    return f"{method}({', '.join(changed)})" if changed else method


def _format_option(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_option(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def result_label(result: dict) -> str:
    return method_label(result["spec"]["method"], result["spec"].get("method_options", {}))


def filter_results(results: Iterable[dict], benchmarks: Sequence[str] = (), protocols: Sequence[str] = (),
                   shots: Sequence[int] = (), methods: Sequence[str] = (),
                   conventions: Sequence[str] = ()) -> list[dict]:
    """Keep results matching every given filter (an empty filter keeps all). A method filter matches
    either the method name (`diam`, every option setting) or the full label (`diam(pi_strategy=uniform)`)."""
    kept = []
    for result in results:
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
    for result in results:
        spec, aggregate = result["spec"], result["aggregate"]
        base, novel = _pct(aggregate, "base"), _pct(aggregate, "novel")
        rows.append({
            "method": method_label(spec["method"], spec["method_options"]),
            "benchmark": spec["benchmark"], "protocol": spec["protocol"], "convention": spec["convention"],
            "shot": spec["shot"], "fold": spec["fold"], "runs": spec["runs"], "seed": spec["seed"],
            "segmenter": spec["segmenter"], "oracle": bool(result.get("oracle")),
            "base_miou": base, "novel_miou": novel, "mean_miou": (base + novel) / 2,
            "hm_miou": harmonic_mean(base, novel), "total_miou": _pct(aggregate, "total"),
            "base_std": _pct(aggregate, "base", "std"), "novel_std": _pct(aggregate, "novel", "std"),
            "mean_std": _pct(aggregate, "mean", "std"), "hm_std": _pct(aggregate, "hm", "std"),
            "total_std": _pct(aggregate, "total", "std"),
            "run_id": result["run_id"], **_provenance(result),
        })
    columns = ["method", "benchmark", "protocol", "convention", "shot", "fold", "runs", "seed", "segmenter",
               "oracle", "base_miou", "novel_miou", "mean_miou", "hm_miou", "total_miou", "base_std", "novel_std",
               "mean_std", "hm_std", "total_std", "run_id", "git_commit", "created", "device"]
    return pd.DataFrame(rows, columns=columns)


def run_rows(results: Iterable[dict]) -> pd.DataFrame:
    """Tidy table: one row per method x fold x run with that run's scores (percent) and provenance."""
    rows = []
    for result in results:
        spec = result["spec"]
        for run in result.get("runs", []):
            run_scores = run.get("scores", {})
            value = {k: (float("nan") if run_scores.get(k) is None else 100 * float(run_scores[k]))
                     for k in ("base", "novel", "mean", "hm", "total")}
            rows.append({
                "method": method_label(spec["method"], spec["method_options"]), "method_name": spec["method"],
                "method_options": spec["method_options"],
                "benchmark": spec["benchmark"], "protocol": spec["protocol"], "convention": spec["convention"],
                "shot": spec["shot"], "fold": spec["fold"], "run": run["run"], "seed": run.get("seed"),
                "num_queries": run.get("num_queries"), "segmenter": spec["segmenter"],
                "oracle": bool(result.get("oracle")),
                "base_miou": value["base"], "novel_miou": value["novel"], "mean_miou": value["mean"],
                "hm_miou": value["hm"], "total_miou": value["total"], "run_id": result["run_id"],
                **_provenance(result),
            })
    columns = ["method", "method_name", "method_options", "benchmark", "protocol", "convention", "shot", "fold",
               "run", "seed", "num_queries", "segmenter", "oracle", "base_miou", "novel_miou", "mean_miou",
               "hm_miou", "total_miou", "run_id", "git_commit", "created", "device"]
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
    provenance (distinct commits and devices, latest creation date)."""
    results = list(results)
    folds = fold_rows(results)
    runs = run_rows(results)
    keys = GROUP_COLUMNS + SETTING_COLUMNS
    columns = keys + ["folds", "num_folds", "complete"] + ALL_METRICS + [f"{m[:-5]}_std" for m in ALL_METRICS] \
        + ["git_commit", "created", "device"]
    if folds.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in folds.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        num_folds = BENCHMARKS.get(row["benchmark"]).num_folds if row["benchmark"] in BENCHMARKS else None
        base, novel = group["base_miou"].mean(), group["novel_miou"].mean()
        fold_ids = sorted(group["fold"])
        row.update(folds=",".join(str(f) for f in fold_ids), num_folds=num_folds,
                   complete=num_folds is not None and group["fold"].nunique() == num_folds,
                   base_miou=base, novel_miou=novel, mean_miou=(base + novel) / 2,
                   hm_miou=harmonic_mean(base, novel), total_miou=group["total_miou"].mean())
        mine = runs[runs["run_id"].isin(set(group["run_id"]))] if not runs.empty else runs
        row.update(_replicate_std(mine, fold_ids))
        row.update(git_commit=",".join(sorted({str(c)[:10] for c in group["git_commit"] if c})),
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


def to_csv(board: pd.DataFrame) -> str:
    out = board.copy()
    out["folds"] = out["folds"].astype(str)
    return out.to_csv(index=False, float_format="%.2f")


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: float, std: Optional[float] = None) -> str:
    if _is_nan(value):
        return "-"
    text = f"{value:.2f}"
    if std is not None and not _is_nan(std):
        text += f" ± {std:.2f}"
    return text


def _cell(value: float, best: bool, std: Optional[float] = None) -> str:
    text = format_value(value, std)
    return f"[bold green]{text}[/]" if best else text


def best_values(group: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """The best (largest) value per metric among complete, non-oracle rows."""
    eligible = group[group["complete"].astype(bool) & ~group["oracle"].astype(bool)]
    return {m: eligible[m].max() if not eligible.empty else float("nan") for m in metrics}


def row_label(row) -> str:
    label = str(row["method"]) + (" [oracle]" if row["oracle"] else "")
    if row["segmenter"] != "builtin":
        label += f" @{row['segmenter']}"
    return label


def _grouped_tables(frame: pd.DataFrame, title_prefix: str, what: str):
    """(group key, rows, metric columns, titled empty Table) per (benchmark, protocol, convention, shot)."""
    for key, group in frame.groupby(GROUP_COLUMNS, sort=True):
        benchmark, protocol, convention, shot = key
        title = f"{title_prefix}{benchmark} · {protocol} · {shot}-shot · {convention} convention{what}"
        yield key, group, group_metrics(convention), Table(title=title)


def print_leaderboard(board: pd.DataFrame, console: Optional[Console] = None, title_prefix: str = "",
                      sort: str = "hm", published: Optional[pd.DataFrame] = None) -> None:
    """One rich table per (benchmark, protocol, convention, shot); best value per column in bold.

    `published` (from `published.published_rows`) adds marked reference rows and the gap of each own
    row to the published row of the same method."""
    from rich.markup import escape

    console = console or Console()
    if board.empty:
        console.print("no results stored yet: run `gfss-bench run --method diam --protocol practical`")
        return
    for (benchmark, protocol, convention, shot), group, metrics, table in _grouped_tables(
            board, title_prefix, " (mIoU %, fold means ± std over runs)"):
        table.add_column("method")
        table.add_column("folds", justify="right")
        for m in metrics:
            table.add_column(METRIC_TITLES[m], justify="right")
        best = best_values(group, metrics)
        for _, row in sort_board(group, sort).iterrows():
            folds = f"{len(row['folds'].split(','))}/{row['num_folds']}"
            if not row["complete"]:
                folds = f"[yellow]{folds} incomplete[/]"
            table.add_row(escape(row_label(row)), folds,
                          *(_cell(row[m], row["complete"] and not row["oracle"] and row[m] == best[m],
                                  row[f"{m[:-5]}_std"]) for m in metrics))
        if published is not None and not published.empty:
            from gfss_bench.results.published import gaps, matching

            refs = matching(published, benchmark, protocol, convention, shot)
            for _, ref in refs.iterrows():
                table.add_row(f"[cyan]{escape(ref['label'])} (published)[/]", "paper",
                              *(format_value(ref[m]) for m in metrics))
            for gap in gaps(group, refs):
                note = "" if gap["complete"] else " (own row incomplete)"
                table.add_row(f"[magenta]Δ {escape(gap['label'])}{note}[/]", "",
                              *(_signed(gap[m]) for m in metrics))
        console.print(table)


def _signed(value: float) -> str:
    return "-" if _is_nan(value) else f"{value:+.2f}"


def print_per_fold(folds: pd.DataFrame, console: Optional[Console] = None) -> None:
    """The fold breakdown: one row per method x fold, mean ± std over that fold's runs."""
    from rich.markup import escape

    console = console or Console()
    if folds.empty:
        return
    for _, group, metrics, table in _grouped_tables(folds, "", ": per fold (mIoU %, mean ± std over runs)"):
        for name in ["method", "fold", "runs"] + [METRIC_TITLES[m] for m in metrics]:
            table.add_column(name, justify="left" if name == "method" else "right")
        for _, row in group.sort_values(["method", "fold"], kind="stable").iterrows():
            table.add_row(escape(row_label(row)), str(row["fold"]), str(row["runs"]),
                          *(format_value(row[m], row[f"{m[:-5]}_std"]) for m in metrics))
        console.print(table)


def per_class_frame(results: Iterable[dict]) -> pd.DataFrame:
    """Tidy per-class IoU (percent): one row per result x episode class, averaged over runs."""
    rows = []
    for result in results:
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
                "method": method_label(spec["method"], spec["method_options"]),
                "benchmark": spec["benchmark"], "protocol": spec["protocol"], "convention": spec["convention"],
                "shot": spec["shot"], "fold": spec["fold"], "segmenter": spec["segmenter"],
                "oracle": bool(result.get("oracle")), "class_index": index, "class_id": ids[index],
                "class_name": name, "role": role,
                "iou": 100 * float(defined.mean()) if defined.size else float("nan"),
                "runs_defined": int(defined.size),
            })
    columns = ["method", "benchmark", "protocol", "convention", "shot", "fold", "segmenter", "oracle",
               "class_index", "class_id", "class_name", "role", "iou", "runs_defined"]
    return pd.DataFrame(rows, columns=columns)


def per_class_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """One fold's per-class frame as a (class x method) matrix, classes in episode order; the index holds
    (class_index, class_id, class_name, role)."""
    frame = frame.assign(label=[row_label(r) for _, r in frame.iterrows()])
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


def print_per_class(frame: pd.DataFrame, console: Optional[Console] = None) -> None:
    """Per group and fold: a table of classes (with their role) x methods."""
    from rich.markup import escape

    console = console or Console()
    if frame.empty:
        console.print("no per-class data: the selected results hold no confusion matrices")
        return
    for key, group in frame.groupby(GROUP_COLUMNS + ["fold"], sort=True):
        benchmark, protocol, convention, shot, fold = key
        matrix = per_class_matrix(group)
        table = Table(title=f"{benchmark} · {protocol} · {shot}-shot · fold {fold}: per-class IoU "
                            "(%, mean over runs)")
        table.add_column("class")
        table.add_column("role")
        for label in matrix.columns:
            table.add_column(escape(str(label)), justify="right")
        for (index, class_id, name, role), values in matrix.iterrows():
            style = "bold" if role == "novel" else ""
            table.add_row(f"[{style}]{escape(str(name))}[/]" if style else escape(str(name)), role,
                          *(format_value(v) for v in values))
        console.print(table)
