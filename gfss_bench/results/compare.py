"""Paired comparison of two methods on the same episodes.

Every method is evaluated on the same support sets (run r of a fold is a pure function of the seed,
benchmark, fold, shot and r), so the runs of two methods pair up: same benchmark, protocol, metric
convention, shot, segmenter weights (each fold's exact `spec.segmenter`), protocol version, episode sampler, fold,
run index and run seed (and, where stored, the same support images); pairs are summarised per segmenter label
(the user's choice over all folds, `describe.segmenter_label`), protocol version and sampler.
For each pair the difference A - B of base, novel, mean and HM mIoU (percentage points) is taken; over
the n pairs of a group the mean difference gets a two-sided 95% Student-t interval
mean ± t(0.975, n-1) * sd / sqrt(n). The pairs span folds, so the interval treats the folds' runs as
exchangeable replicates; it is a guide to run-to-run noise, not a test of a fold effect. An interval
that contains 0 is reported as not significant.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gfss_bench.errors import GFSSError
from gfss_bench.results.describe import described, result_label, segmenter_label, versions
from gfss_bench.results.report import print_title
from gfss_bench.results.tables import GROUP_COLUMNS, group_title, sampler_title, signed_text

SUMMARY_KEYS = GROUP_COLUMNS + ["segmenter", "protocol_version", "episodes"]  # segmenter: the label
PAIR_KEYS = SUMMARY_KEYS + ["fold", "run", "seed"]
RUN_KEYS = GROUP_COLUMNS + ["segmenter_id", "protocol_version", "episodes", "fold", "run", "seed"]  # what pairs
COMPARED = {"base": "base", "novel": "novel", "mean": "mean", "hm": "HM"}


def t_cdf(x: float, df: float) -> float:
    """Student-t CDF by Simpson integration of the density (accurate to ~1e-9 for the quantiles used)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    steps = 4000
    grid = np.linspace(0.0, x, steps + 1)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid * grid / df))
    weights = np.ones(steps + 1)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return 0.5 + float((weights * density).sum()) * (x / steps) / 3


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with df degrees of freedom (0.5 < p < 1), by bisection on t_cdf."""
    if not 0.5 <= p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
    low, high = 0.0, 2.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def confidence_interval(differences: Iterable[float], level: float = 0.95) -> dict:
    values = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    n = int(values.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "sd": nan, "low": nan, "high": nan, "significant": False}
    mean = float(values.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": nan, "low": nan, "high": nan, "significant": False}
    sd = float(values.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "sd": sd, "low": low, "high": high, "significant": bool(low > 0 or high < 0)}


def _side(results: list[dict], name: str) -> list[dict]:
    exact = [r for r in results if result_label(r) == name]
    return exact if exact else [r for r in results if r["spec"]["method"] == name]


def _runs(results: list[dict], name: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for result in _side(results, name):
        spec, version = result["spec"], versions(result)
        for run in result.get("runs", []):
            key = (spec["benchmark"], spec["protocol"], spec["convention"], spec["shot"], spec["segmenter"],
                   version["protocol_version"], version["episodes"], spec["fold"], run["run"], run.get("seed"))
            if key in out:
                raise GFSSError(f"--compare {name!r} matches several settings ({result_label(result)!r} and "
                                f"{out[key]['label']!r}); give the full label shown by `gfss-bench report`")
            out[key] = {"label": result_label(result), "segmenter": segmenter_label(result),
                        "scores": run.get("scores", {}), "supports": run.get("support_images")}
    return out


def paired_differences(results: Iterable[dict], a: str, b: str) -> tuple[pd.DataFrame, int]:
    """One row per paired run (A - B, percentage points) and the number of runs whose supports differ."""
    results = described(results)
    runs_a, runs_b = _runs(results, a), _runs(results, b)
    for name, runs in ((a, runs_a), (b, runs_b)):
        if not runs:
            raise GFSSError(f"--compare: no stored runs of {name!r} among the selected results")
    rows, mismatched = [], 0
    for key in sorted(set(runs_a) & set(runs_b), key=lambda k: tuple(str(v) for v in k)):
        left, right = runs_a[key], runs_b[key]
        if left["supports"] is not None and right["supports"] is not None and left["supports"] != right["supports"]:
            mismatched += 1
            continue
        labels = dict.fromkeys((left["segmenter"], right["segmenter"]))  # one unless A and B named the weights apart
        row = dict(zip(RUN_KEYS, key), segmenter=" / ".join(labels), a=left["label"], b=right["label"])
        for metric in COMPARED:
            va, vb = left["scores"].get(metric), right["scores"].get(metric)
            row[metric] = float("nan") if va is None or vb is None else 100 * (float(va) - float(vb))
        rows.append(row)
    return pd.DataFrame(rows, columns=PAIR_KEYS + ["segmenter_id", "a", "b"] + list(COMPARED)), mismatched


def summarize(pairs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per group and metric: n pairs, mean difference, sd, interval, significance."""
    rows = []
    for key, group in pairs.groupby(SUMMARY_KEYS, sort=True):
        for metric in COMPARED:
            interval = confidence_interval(group[metric], level)
            rows.append(dict(zip(SUMMARY_KEYS, key), metric=metric,
                             folds=",".join(str(f) for f in sorted(group["fold"].unique())), **interval))
    return pd.DataFrame(rows, columns=SUMMARY_KEYS + ["metric", "folds", "n", "mean", "sd", "low", "high",
                                                      "significant"])


def verdict(row, a: str, b: str) -> str:
    if row["n"] < 2 or math.isnan(row["low"]):
        return "too few pairs"
    if not row["significant"]:
        return "not significant"
    return f"{a} better" if row["mean"] > 0 else f"{b} better"


def print_comparison(pairs: pd.DataFrame, summary: pd.DataFrame, a: str, b: str, mismatched: int = 0,
                     console: Optional[Console] = None, per_run: bool = True) -> None:
    console = console or Console()
    if pairs.empty:
        console.print(f"no paired runs of {escape(a)} and {escape(b)}: they share no benchmark, protocol, "
                      "convention, shot, protocol version, episodes, fold, run and seed")
        return
    if mismatched:
        console.print(f"[yellow]{mismatched} runs left out: same key but different support images[/]")
    for key, group in pairs.groupby(SUMMARY_KEYS, sort=True):
        benchmark, protocol, convention, shot, segmenter, protocol_version, episodes = key
        where = (f"protocol v{protocol_version}, {sampler_title(episodes)}"
                 + ("" if segmenter == "builtin" else f", segmenter {segmenter}"))
        print_title(console, group_title(benchmark, protocol, convention, shot), where)
        if per_run:
            table = Table(title=f"{escape(a)} − {escape(b)} per paired run (mIoU points)")
            for name in ("fold", "run", "seed") + tuple(COMPARED.values()):
                table.add_column(name, justify="right")
            for _, row in group.iterrows():
                table.add_row(str(row["fold"]), str(row["run"]), str(row["seed"]),
                              *(signed_text(row[m]) for m in COMPARED))
            console.print(table)
        table = Table(title=f"{escape(a)} − {escape(b)}: mean paired difference, 95% t-interval")
        for name in ("metric", "pairs", "mean Δ", "95% CI", "verdict"):
            table.add_column(name, justify="left" if name in ("metric", "verdict") else "right")
        mine = summary[(summary[SUMMARY_KEYS] == pd.Series(dict(zip(SUMMARY_KEYS, key)))).all(axis=1)]
        for _, row in mine.iterrows():
            interval = "-" if math.isnan(row["low"]) else f"[{signed_text(row['low'])}, {signed_text(row['high'])}]"
            table.add_row(COMPARED[row["metric"]], str(row["n"]), signed_text(row["mean"]), interval,
                          escape(verdict(row, a, b)))
        console.print(table)
