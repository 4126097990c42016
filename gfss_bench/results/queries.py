"""Per-query results: the stored per-query counts (the sidecar files of `results/store.py`) as a tidy table, each
query's mIoU, and the queries where a method does worst or best, or where method A beats method B most.

A query's mIoU is the mean IoU over the classes present in its ground truth or prediction (background included);
the queries of one run are told apart by their position in the run, so a query drawn twice (a COCO-20i run can hold
an image twice) gives two rows.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gfss_bench.errors import GFSSError
from gfss_bench.results.describe import described, result_label, versions
from gfss_bench.results.store import ResultStore

EPISODE_KEYS = ["benchmark", "protocol", "convention", "shot", "segmenter_id", "protocol_version", "episodes", "fold",
                "run", "seed"]
QUERY_KEYS = EPISODE_KEYS + ["position", "query"]
COUNT_COLUMNS = ["method"] + QUERY_KEYS + ["class_index", "class", "role", "intersection", "union", "iou"]


def _run_rows(result: dict, run: dict, records: dict) -> pd.DataFrame:
    """The tidy rows of one run's per-query records."""
    names, num_base = result.get("class_names") or [], result.get("num_base", 0)
    queries = records["queries"]
    counts = [len(q["classes"]) for q in queries]
    classes = np.fromiter((c for q in queries for c in q["classes"]), dtype=np.int64, count=sum(counts))
    intersection = np.fromiter((v for q in queries for v in q["intersection"]), dtype=np.int64, count=sum(counts))
    union = np.fromiter((v for q in queries for v in q["union"]), dtype=np.int64, count=sum(counts))
    frame = pd.DataFrame({
        "position": np.repeat(np.arange(len(queries)), counts),
        "query": np.repeat(np.array([q["query"] for q in queries], dtype=object), counts),
        "class_index": classes, "intersection": intersection, "union": union})
    frame["class"] = [names[c] if c < len(names) else str(c) for c in classes]
    frame["role"] = np.where(classes == 0, "background", np.where(classes <= num_base, "base", "novel"))
    frame["iou"] = 100 * intersection / np.maximum(union, 1)
    spec = result["spec"]
    frame = frame.assign(method=result_label(result), benchmark=spec["benchmark"], protocol=spec["protocol"],
                         convention=spec["convention"], shot=spec["shot"], segmenter_id=spec["segmenter"],
                         protocol_version=versions(result)["protocol_version"], episodes=versions(result)["episodes"],
                         fold=spec["fold"], run=run["run"], seed=run.get("seed"))
    return frame[COUNT_COLUMNS]


def query_counts(results: Iterable[dict], store: ResultStore) -> tuple[pd.DataFrame, list[dict]]:
    """One row per result x run x query x class present, and the results stored without per-query records.
    A damaged or missing sidecar is a GFSSError naming it."""
    frames, without = [], []
    for result in described(results):
        try:
            stored = store.load_query_records(result)
        except ValueError as error:
            raise GFSSError(f"the per-query records of {store.path_for(result['run_id'])} cannot be used: {error}; "
                            "rerun that spec with --force to write them again") from None
        if stored is None:
            without.append(result)
            continue
        runs = {run["run"]: run for run in result.get("runs", [])}
        frames += [_run_rows(result, runs.get(records["run"], records), records) for records in stored]
    frames = [frame for frame in frames if not frame.empty]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COUNT_COLUMNS)), without


def query_scores(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per method x query of a run: its mIoU (%) over the classes present, and those classes' names."""
    if counts.empty:
        return pd.DataFrame(columns=["method"] + QUERY_KEYS + ["miou", "classes"])
    grouped = counts.groupby(["method"] + QUERY_KEYS, sort=False, dropna=False)
    return grouped.agg(miou=("iou", "mean"), classes=("class", " ".join)).reset_index()


def extremes(scores: pd.DataFrame, count: int, best: bool) -> pd.DataFrame:
    """Each method's `count` queries of highest (best) or lowest mIoU."""
    ordered = scores.sort_values(["method", "miou"], ascending=[True, not best], kind="stable")
    return ordered.groupby("method", sort=True).head(count).reset_index(drop=True)


def compared(scores: pd.DataFrame, a: str, b: str, count: int, best: bool = True) -> pd.DataFrame:
    """The `count` queries where A's mIoU minus B's is largest (best) or smallest, on the same episodes."""
    sides = []
    for name in (a, b):
        side = scores[scores["method"] == name]
        if side.empty:
            labels = scores.loc[scores["method"].str.split("(").str[0] == name, "method"].unique()
            if len(labels) > 1:
                raise GFSSError(f"--compare {name[:100]!r} matches several settings ({', '.join(labels[:4])}); give "
                                "the full label shown by `gfss-bench report`")
            side = scores[scores["method"].isin(labels)]
        if side.empty:
            raise GFSSError(f"--compare: no per-query records of {name[:100]!r} among the selected results")
        sides.append(side.drop(columns=["method"]))
    pairs = sides[0].merge(sides[1], on=QUERY_KEYS, suffixes=("_a", "_b"))
    pairs = pairs.assign(difference=pairs["miou_a"] - pairs["miou_b"])
    return pairs.sort_values("difference", ascending=not best, kind="stable").head(count).reset_index(drop=True)


def print_query_table(frame: pd.DataFrame, title: str, console: Optional[Console] = None) -> None:
    """A per-query table (from `query_scores`, `extremes` or `compared`) on the terminal; the classes present are
    counted (the csv names them)."""
    console = console or Console()
    values = [c for c in ("method", "miou", "miou_a", "miou_b", "difference") if c in frame.columns]
    headers = {"miou": "mIoU", "miou_a": "mIoU A", "miou_b": "mIoU B", "difference": "A - B"}
    table = Table(title=escape(title))
    for name in ["benchmark", "shot", "fold", "run", "query"] + values + ["classes"]:
        table.add_column(headers.get(name, name), justify="left" if name in ("benchmark", "query", "method")
                         else "right")
    classes = frame["classes_a"] if "classes_a" in frame else frame["classes"]
    for (_, row), present in zip(frame.iterrows(), classes):
        cells = [row["benchmark"], row["shot"], row["fold"], row["run"], row["query"]]
        cells += [f"{row[c]:+.2f}" if c == "difference" else (f"{row[c]:.2f}" if "miou" in c else row[c])
                  for c in values]
        table.add_row(*(escape(str(cell)) for cell in cells), str(len(present.split(" "))))
    console.print(table)
