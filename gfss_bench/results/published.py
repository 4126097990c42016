"""Published reference results (docs/protocol.md §7), shipped as package data in `published.json`.

Published rows carry the paper's base / novel / mean (DIaM convention) or base / novel / total
(POP convention); the HM of a published row is derived from its base and novel means, exactly as
gfss-bench derives its own HM from fold-mean base and novel mIoU, so the two compare.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pandas as pd

from gfss_bench.metrics import harmonic_mean

COLUMNS = ["method", "label", "benchmark", "protocol", "convention", "shot", "base_miou", "novel_miou",
           "mean_miou", "hm_miou", "total_miou"]


@lru_cache(maxsize=1)
def load_published() -> tuple[dict, ...]:
    """The raw entries of published.json."""
    text = resources.files("gfss_bench.results").joinpath("published.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["entries"])


def published_rows() -> pd.DataFrame:
    """Published results as leaderboard-like rows (percent); mean for the POP entries is (base+novel)/2."""
    rows = []
    nan = float("nan")
    for entry in load_published():
        base, novel = float(entry["base"]), float(entry["novel"])
        rows.append({"method": entry["method"], "label": entry["label"], "benchmark": entry["benchmark"],
                     "protocol": entry["protocol"], "convention": entry["convention"], "shot": int(entry["shot"]),
                     "base_miou": base, "novel_miou": novel,
                     "mean_miou": float(entry["mean"]) if "mean" in entry else (base + novel) / 2,
                     "hm_miou": harmonic_mean(base, novel), "total_miou": float(entry.get("total", nan))})
    return pd.DataFrame(rows, columns=COLUMNS)


def matching(published: pd.DataFrame, benchmark: str, protocol: str, convention: str, shot: int) -> pd.DataFrame:
    """Published rows comparable with a leaderboard group: same benchmark, protocol, convention, shot."""
    keep = ((published["benchmark"] == benchmark) & (published["protocol"] == protocol)
            & (published["convention"] == convention) & (published["shot"] == int(shot)))
    return published[keep]


def gaps(rows: pd.DataFrame, refs: pd.DataFrame) -> list[dict]:
    """Own row minus published row, per metric, for every own row (with its shown `label`) whose method name
    has a published row."""
    out = []
    for _, row in rows.iterrows():
        for _, ref in refs[refs["method"] == row["method_name"]].iterrows():
            gap = {"label": f"{row['label']} − {ref['label']}", "own": row["method"], "published": ref["label"],
                   "complete": bool(row["complete"])}
            for metric in ("base_miou", "novel_miou", "mean_miou", "hm_miou", "total_miou"):
                gap[metric] = float(row[metric]) - float(ref[metric])
            out.append(gap)
    return out
