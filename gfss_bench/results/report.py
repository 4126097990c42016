"""Leaderboards from stored results: fold-level rows, fold means per method, rich tables and CSV.

Fold means: base and novel mIoU are averaged over folds (each fold's value is its mean over runs),
then mean = (base + novel) / 2 and HM = 2*base*novel/(base + novel) of those averages, as papers do.
Rows with fewer folds than the benchmark has are marked incomplete, never passed off as complete.
Results of different metric conventions are never mixed in one table.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import pandas as pd
from rich.console import Console
from rich.table import Table

from gfss_bench.benchmark.metrics import harmonic_mean
from gfss_bench.methods import METHODS
from gfss_bench.protocols import BENCHMARKS

GROUP_COLUMNS = ["benchmark", "protocol", "convention", "shot"]
METRICS = ["base_miou", "novel_miou", "mean_miou", "hm_miou"]


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


def fold_rows(results: Iterable[dict]) -> pd.DataFrame:
    """One row per stored result (method x benchmark x fold x protocol x shot ...), mIoU in percent."""
    rows = []
    for result in results:
        spec, aggregate = result["spec"], result["aggregate"]
        rows.append({
            "method": method_label(spec["method"], spec["method_options"]),
            "benchmark": spec["benchmark"], "protocol": spec["protocol"], "convention": spec["convention"],
            "shot": spec["shot"], "fold": spec["fold"], "runs": spec["runs"], "seed": spec["seed"],
            "segmenter": spec["segmenter"], "oracle": bool(result.get("oracle")),
            "base_miou": 100 * aggregate["base"]["mean"], "novel_miou": 100 * aggregate["novel"]["mean"],
            "base_std": 100 * aggregate["base"]["std"], "novel_std": 100 * aggregate["novel"]["std"],
            "run_id": result["run_id"],
        })
    columns = ["method", "benchmark", "protocol", "convention", "shot", "fold", "runs", "seed", "segmenter",
               "oracle", "base_miou", "novel_miou", "base_std", "novel_std", "run_id"]
    return pd.DataFrame(rows, columns=columns)


def leaderboard(results: Iterable[dict]) -> pd.DataFrame:
    """Fold means per (benchmark, protocol, convention, shot, method, setting)."""
    folds = fold_rows(results)
    keys = GROUP_COLUMNS + ["method", "segmenter", "runs", "seed", "oracle"]
    columns = keys + ["folds", "num_folds", "complete"] + METRICS
    if folds.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in folds.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        num_folds = BENCHMARKS.get(row["benchmark"]).num_folds if row["benchmark"] in BENCHMARKS else None
        base, novel = group["base_miou"].mean(), group["novel_miou"].mean()
        row.update(folds=",".join(str(f) for f in sorted(group["fold"])), num_folds=num_folds,
                   complete=num_folds is not None and group["fold"].nunique() == num_folds,
                   base_miou=base, novel_miou=novel, mean_miou=(base + novel) / 2,
                   hm_miou=harmonic_mean(base, novel))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def to_csv(board: pd.DataFrame) -> str:
    out = board.copy()
    out["folds"] = out["folds"].astype(str)
    return out.to_csv(index=False, float_format="%.2f")


def _cell(value: float, best: bool) -> str:
    text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    return f"[bold green]{text}[/]" if best else text


def print_leaderboard(board: pd.DataFrame, console: Optional[Console] = None, title_prefix: str = "") -> None:
    """One rich table per (benchmark, protocol, convention, shot); best value per column in bold."""
    console = console or Console()
    if board.empty:
        console.print("no results stored yet: run `gfss-bench run --method diam --protocol practical`")
        return
    for key, group in board.groupby(GROUP_COLUMNS, sort=True):
        benchmark, protocol, convention, shot = key
        table = Table(title=f"{title_prefix}{benchmark} · {protocol} · {shot}-shot · {convention} convention "
                            "(mIoU %, fold means)")
        for name in ("method", "folds", "base", "novel", "mean", "HM"):
            table.add_column(name, justify="left" if name == "method" else "right")
        best = {m: group.loc[group["complete"], m].max() for m in METRICS}
        for _, row in group.sort_values("hm_miou", ascending=False).iterrows():
            label = row["method"] + (" [oracle]" if row["oracle"] else "")
            if row["segmenter"] != "builtin":
                label += f" @{row['segmenter']}"
            folds = f"{len(row['folds'].split(','))}/{row['num_folds']}"
            if not row["complete"]:
                folds = f"[yellow]{folds} incomplete[/]"
            table.add_row(label, folds, *(_cell(row[m], row["complete"] and row[m] == best[m]) for m in METRICS))
        console.print(table)
