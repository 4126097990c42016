"""A static, self-contained leaderboard page: inline CSS and JavaScript, figures embedded as base64 PNG,
no network fetches. One sortable table per (benchmark, protocol, convention, shot); every row carries
its provenance (git commit, date, device). Every string from a result is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
from datetime import datetime, timezone
from html import escape
from typing import Iterable, Optional

import pandas as pd

from gfss_bench.results.report import (GROUP_COLUMNS, METRIC_TITLES, best_values, group_metrics, leaderboard,
                                       row_label, sort_board)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1a1a1a; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.5rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.best { font-weight: bold; color: #0072B2; }
tr.incomplete td:first-child::after { content: " (incomplete)"; color: #D55E00; font-size: 0.8em; }
tr.published { font-style: italic; background: #fafafa; }
td.prov { color: #555; font-size: 0.8rem; font-family: ui-monospace, monospace; }
figure { display: inline-block; margin: 1rem 1rem 0 0; } figure img { max-width: 34rem; height: auto; }
figcaption { font-size: 0.8rem; color: #555; }
p.note { color: #555; font-size: 0.85rem; }
"""

SCRIPT = """
(function () {
  function cellKey(cell, numeric) {
    if (!numeric) { return cell.textContent.trim().toLowerCase(); }
    var value = parseFloat(cell.getAttribute('data-value'));
    return isNaN(value) ? null : value;
  }
  function sortTable(table, index, header) {
    var numeric = header.getAttribute('data-type') === 'num';
    var current = header.getAttribute('aria-sort');
    var direction = current ? (current === 'descending' ? 'ascending' : 'descending')
                            : (numeric ? 'descending' : 'ascending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a.cells[index], numeric), y = cellKey(b.cells[index], numeric);
      if (x === y) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      var order = x < y ? -1 : 1;
      return direction === 'ascending' ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', direction);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      header.addEventListener('click', function () { sortTable(table, index, header); });
    });
  });
})();
"""


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number_cell(value, std=None, best=False) -> str:
    if _nan(value):
        return '<td data-value="">–</td>'
    text = f"{value:.2f}" + ("" if _nan(std) else f" ± {std:.2f}")
    css = ' class="best"' if best else ""
    return f'<td{css} data-value="{value:.6f}">{escape(text)}</td>'


def _figure_png(figure, caption: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _group_table(group: pd.DataFrame, key: tuple, sort: str, refs: Optional[pd.DataFrame]) -> str:
    metrics = group_metrics(key[2])
    best = best_values(group, metrics)
    head = ['<th data-type="text">method</th>', '<th data-type="text">folds</th>']
    head += [f'<th data-type="num">{escape(METRIC_TITLES[m])}</th>' for m in metrics]
    head += ['<th data-type="text">commit</th>', '<th data-type="text">date</th>', '<th data-type="text">device</th>']
    rows = []
    for _, row in sort_board(group, sort).iterrows():
        css = [] if row["complete"] else ["incomplete"]
        folds = f"{len(str(row['folds']).split(','))}/{row['num_folds']}"
        cells = [f"<td>{escape(row_label(row))}</td>", f"<td>{escape(folds)}</td>"]
        cells += [_number_cell(row[m], row[f"{m[:-5]}_std"],
                               bool(row["complete"] and not row["oracle"] and row[m] == best[m])) for m in metrics]
        cells += [f'<td class="prov">{escape(str(row[k] or "–"))}</td>' for k in ("git_commit", "created", "device")]
        rows.append(f'<tr class="{" ".join(css)}">' + "".join(cells) + "</tr>")
    if refs is not None:
        for _, ref in refs.iterrows():
            cells = [f"<td>{escape(ref['label'])} (published)</td>", "<td>paper</td>"]
            cells += [_number_cell(ref[m]) for m in metrics]
            cells += ['<td class="prov">paper</td>', '<td class="prov">–</td>', '<td class="prov">–</td>']
            rows.append('<tr class="published">' + "".join(cells) + "</tr>")
    return ('<table class="sortable"><thead><tr>' + "".join(head) + "</tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>")


def html_page(results: Iterable[dict], sort: str = "hm", published: Optional[pd.DataFrame] = None,
              figures: bool = True, title: str = "gfss-bench leaderboard") -> str:
    """The whole page as one string."""
    results = list(results)
    board = leaderboard(results)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="note">Generated {escape(generated)} from {len(results)} stored results. mIoU in %: '
             "fold means ± std over runs; mean = (base + novel) / 2 and HM = harmonic mean of the fold means. "
             "Bold: best complete, non-oracle row. Click a column header to sort.</p>"]
    if board.empty:
        parts.append("<p>No results match.</p>")
    if figures and not board.empty:
        import matplotlib

        matplotlib.use("Agg")
        from gfss_bench.results.plots import bars_figure, tradeoff_figure
    from gfss_bench.results.published import matching

    for key, group in board.groupby(GROUP_COLUMNS, sort=True):
        benchmark, protocol, convention, shot = key
        heading = f"{benchmark} · {protocol} protocol · {shot}-shot · {convention} convention"
        refs = matching(published, *key) if published is not None else None
        parts.append(f"<section><h2>{escape(heading)}</h2>")
        parts.append(_group_table(group, key, sort, refs))
        if figures:
            parts.append(_figure_png(bars_figure(group, heading), f"base, novel and HM mIoU per method, {heading}"))
            parts.append(_figure_png(tradeoff_figure(group, heading),
                                     f"base vs. novel mIoU with iso-HM curves, {heading}"))
        parts.append("</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
