"""The leaderboard model: every decision about a leaderboard table, taken once, for every output to render.

`Leaderboard.build(results, sort, published)` groups the fold means of `report.leaderboard` by
(benchmark, protocol, convention, shot) and decides, per group:
- the rows and their order: own rows of the newest versions sorted by the chosen metric (NaN last), then
  rows of older protocol or method versions (marked in their label, see `report.row_marks`), then the
  published rows of the same benchmark, protocol, convention and shot, then a Δ row (own − published)
  for each current own row whose method has a published row;
- the best cell per metric: the largest value among complete, non-oracle own rows of the newest versions
  (ties are all best); published, Δ, incomplete, oracle and older rows are never best;
- the fold counts ("3/4") and incomplete marks, and the notes under the table.

The rich table (`report.print_leaderboard`), CSV and JSON (`exports.row_record`), LaTeX, Markdown
(`exports`), HTML (`html`) and the figures (`plots`) only render this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from gfss_bench.results.tables import (GROUP_COLUMNS, group_metrics, group_title, leaderboard, row_marks,
                                      sampler_title, signed_text, sort_board)

NAN = float("nan")
DETAIL_COLUMNS = ["segmenter", "segmenter_ids", "runs", "seed", "protocol_version", "method_version", "episodes",
                  "git_commit", "created", "device"]


@dataclass(frozen=True)
class Cell:
    """One metric of one row, in percent (NaN when unknown); a `signed` cell is a difference (Δ rows)."""

    value: float
    std: float = NAN
    is_best: bool = False
    signed: bool = False

    @property
    def missing(self) -> bool:
        return math.isnan(self.value)

    @property
    def has_std(self) -> bool:
        return not math.isnan(self.std)

    def number(self) -> str:
        return signed_text(self.value) if self.signed else f"{self.value:.2f}"

    def text(self, with_std: bool = True, missing: str = "-") -> str:
        if self.missing:
            return missing
        return self.number() + (f" ± {self.std:.2f}" if with_std and self.has_std else "")


@dataclass(frozen=True)
class Row:
    """A table row. `kind`: "result" (own fold means), "published" (a paper's numbers) or "delta"."""

    kind: str
    label: str  # what every output shows in the method column (version and setting marks included)
    method: str  # the stored method label; the paper's method name for published rows
    cells: Mapping[str, Cell]  # metric column -> cell, in the group's metric order
    folds: tuple[int, ...] = ()
    num_folds: Optional[int] = None
    complete: bool = True
    oracle: bool = False
    older_version: bool = False
    details: Optional[Mapping[str, Any]] = None  # own rows: DETAIL_COLUMNS (setting, versions, provenance)

    @property
    def incomplete(self) -> bool:
        return self.kind == "result" and not self.complete

    @property
    def folds_text(self) -> str:
        if self.kind == "published":
            return "paper"
        if self.kind == "delta":
            return ""
        return f"{len(self.folds)}/{self.num_folds if self.num_folds is not None else '?'}"

    @property
    def best_metrics(self) -> list[str]:
        return [m for m, cell in self.cells.items() if cell.is_best]


@dataclass(frozen=True)
class Group:
    benchmark: str
    protocol: str
    convention: str
    shot: int
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return group_title(self.benchmark, self.protocol, self.convention, self.shot)

    @property
    def key(self) -> tuple:
        return (self.benchmark, self.protocol, self.convention, self.shot)

    def own_rows(self) -> list[Row]:
        return [row for row in self.rows if row.kind == "result"]

    @property
    def versions_text(self) -> str:
        """The protocol version(s) and episode sampler(s) of the group's own rows, e.g. 'protocol v2, official
        episode sampler'."""
        details = [row.details for row in self.own_rows() if row.details]
        protocols = sorted({int(d["protocol_version"]) for d in details})
        samplers = sorted({str(d["episodes"]) for d in details})
        parts = ["protocol " + "/".join(f"v{v}" for v in protocols)] if protocols else []
        return ", ".join(parts + [sampler_title(sampler) for sampler in samplers])


@dataclass(frozen=True)
class Leaderboard:
    groups: tuple[Group, ...]
    num_results: int = 0

    @classmethod
    def build(cls, results: Iterable[dict], sort: str = "hm",
              published: Optional[pd.DataFrame] = None) -> "Leaderboard":
        """The model of the given (filtered) results; `published` (`published.published_rows()`) adds the
        reference and Δ rows."""
        results = list(results)
        frame = leaderboard(results)
        labels, older = row_marks(frame)
        frame = frame.assign(label=labels, older_version=older)
        newest = int(frame["protocol_version"].max()) if not frame.empty else 0
        groups = tuple(_group(tuple(key), rows, sort, published, newest)
                       for key, rows in frame.groupby(GROUP_COLUMNS, sort=True))
        return cls(groups, len(results))


def _value(row, metric: str) -> float:
    value = row.get(metric)
    return NAN if value is None or pd.isna(value) else float(value)


def _own_row(record, metrics, best: dict) -> Row:
    eligible = _competes(record)
    cells = {m: Cell(_value(record, m), _value(record, f"{m[:-5]}_std"),
                     is_best=eligible and not math.isnan(best[m]) and _value(record, m) == best[m])
             for m in metrics}
    return Row("result", record["label"], record["method"], cells,
               folds=tuple(int(f) for f in str(record["folds"]).split(",")),
               num_folds=None if pd.isna(record["num_folds"]) else int(record["num_folds"]),
               complete=bool(record["complete"]), oracle=bool(record["oracle"]),
               older_version=bool(record["older_version"]), details={k: record[k] for k in DETAIL_COLUMNS})


def _competes(record) -> bool:
    return bool(record["complete"]) and not record["oracle"] and not record["older_version"]


def _group(key: tuple, frame: pd.DataFrame, sort: str, published: Optional[pd.DataFrame],
           newest_protocol: int) -> Group:
    from gfss_bench.results.published import gaps, matching

    benchmark, protocol, convention, shot = key
    metrics = tuple(group_metrics(convention))
    eligible = frame[[_competes(r) for _, r in frame.iterrows()]]
    best = {m: float(eligible[m].max()) if not eligible.empty else NAN for m in metrics}
    older = frame["older_version"]
    ordered = pd.concat([sort_board(frame[~older], sort), sort_board(frame[older], sort)])
    rows = [_own_row(record, metrics, best) for _, record in ordered.iterrows()]
    if published is not None and not published.empty:
        refs = matching(published, benchmark, protocol, convention, shot)
        rows += [Row("published", f"{ref['label']} (published)", ref["method"],
                     {m: Cell(_value(ref, m)) for m in metrics}) for _, ref in refs.iterrows()]
        current = ordered[~ordered["older_version"]]
        for gap in gaps(current, refs):
            note = "" if gap["complete"] else " (own row incomplete)"
            rows.append(Row("delta", f"Δ {gap['label']}{note}", gap["own"],
                            {m: Cell(gap[m], signed=True) for m in metrics}, complete=gap["complete"]))
    return Group(benchmark, protocol, convention, int(shot), metrics, tuple(rows), _notes(rows, newest_protocol))


def _repeated(row: Row) -> str:
    """' (fold F stored more than once: ...)' for a row holding a fold in several results, else ''."""
    repeated = sorted({fold for fold in row.folds if row.folds.count(fold) > 1})
    if not repeated:
        return ""
    return (f" (fold {','.join(map(str, repeated))} stored more than once: other weights under the same segmenter, "
            f"{row.details['segmenter_ids']}, or other evaluation settings; keep one result file per fold)")


def _notes(rows: list[Row], newest_protocol: int) -> tuple[str, ...]:
    """Lines under a table: which rows are incomplete, and why older-version rows are not ranked."""
    own = [row for row in rows if row.kind == "result"]
    notes = []
    incomplete = [f"{row.label}: folds {','.join(map(str, row.folds))} of {row.num_folds or '?'}{_repeated(row)}"
                  for row in own if row.incomplete]
    if incomplete:
        notes.append("incomplete: " + "; ".join(incomplete))
    older = sorted({row.details["protocol_version"] for row in own} - {newest_protocol})
    notes += [f"[protocol v{v}]: evaluated under protocol version {v}, older than the newest stored "
              f"(v{newest_protocol}): other inputs or support sets, not comparable; shown for reference, never best"
              for v in older]
    if any(row.method == "imprint" or row.method.startswith("imprint(") for row in own):
        notes.append("imprint: each novel prototype is a mean support feature scaled to the base weights' norm, "
                     "with no bias and no training; such a prototype correlates with most pixels' features and takes "
                     "many base pixels, so a low base mIoU is what plain imprinting gives")
    if any(row.older_version and row.details["protocol_version"] == newest_protocol for row in own):
        notes.append("[method vN]: an older version of the method than the newest stored (its numerics changed "
                     "since); shown for reference, never best")
    return tuple(notes)
