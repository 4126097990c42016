"""A static, self-contained leaderboard page: inline CSS and JavaScript, figures embedded as base64 PNG,
no network fetches. It renders a `board.Leaderboard`: one sortable table per group, rows and best cells
as the model decides, every own row with its provenance (git commit, date, device), the notes below.
Every string from a result is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Optional, Sequence

from gfss_bench.results.board import Cell, Group, Leaderboard
from gfss_bench.results.tables import METRIC_TITLES

MAX_EMBEDDED_BYTES = 8 << 20  # a `show` figure larger than this is left out of the page

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 90rem;
       padding: 0 1rem; color: #1a1a1a; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.5rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.best { font-weight: bold; color: #0072B2; }
tr.incomplete td:first-child::after { content: " (incomplete)"; color: #D55E00; font-size: 0.8em; }
tr.published, tr.delta { font-style: italic; background: #fafafa; }
tr.older td { color: #777; }
td.prov { color: #555; font-size: 0.8rem; font-family: ui-monospace, monospace; }
div.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(26rem, 1fr)); gap: 1.5rem;
              margin-top: 1rem; }
figure { margin: 0; } figure img { width: 100%; height: auto; } figure.wide { grid-column: 1 / -1; }
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


def _number_cell(cell: Cell) -> str:
    if cell.missing:
        return '<td data-value="">–</td>'
    css = ' class="best"' if cell.is_best else ""
    return f'<td{css} data-value="{cell.value:.6f}">{escape(cell.text())}</td>'


def _figure_png(figure, caption: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


PROVENANCE = ("git_commit", "created", "device")


def _group_table(group: Group) -> str:
    head = ['<th data-type="text">method</th>', '<th data-type="text">folds</th>']
    head += [f'<th data-type="num">{escape(METRIC_TITLES[m])}</th>' for m in group.metrics]
    head += ['<th data-type="text">commit</th>', '<th data-type="text">date</th>', '<th data-type="text">device</th>']
    rows = []
    for row in group.rows:
        css = [row.kind] if row.kind != "result" else []
        css += ["incomplete"] if row.incomplete else []
        css += ["older"] if row.older_version else []
        cells = [f"<td>{escape(row.label)}</td>", f"<td>{escape(row.folds_text)}</td>"]
        cells += [_number_cell(row.cells[m]) for m in group.metrics]
        cells += [f'<td class="prov">{escape(str((row.details or {}).get(k) or "–"))}</td>' for k in PROVENANCE]
        rows.append(f'<tr class="{" ".join(css)}">' + "".join(cells) + "</tr>")
    return ('<table class="sortable"><thead><tr>' + "".join(head) + "</tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>")


def _qualitative_png(path: Path, caption: str) -> str:
    """A figure rendered by `gfss-bench show`, embedded as it is (full width)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure class="wide"><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _qualitative_files(folder: Optional[Path], group: Group) -> list[Path]:
    """`show-<benchmark>-<protocol>-<shot>shot*.png` files of at most MAX_EMBEDDED_BYTES in `folder`."""
    if folder is None or not folder.is_dir():
        return []
    pattern = f"show-{group.benchmark}-{group.protocol}-{group.shot}shot*.png"
    return [path for path in sorted(folder.glob(pattern))
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_EMBEDDED_BYTES]


def html_page(board: Leaderboard, figures: bool = True, title: str = "gfss-bench leaderboard",
              results: Sequence[dict] = (), qualitative_dir: Optional[Path] = None) -> str:
    """The whole page as one string. With `results`, each group also shows where its novel pixels go (per fold,
    from the stored confusion matrices); a `show-<benchmark>-<protocol>-<shot>shot*.png` in `qualitative_dir`
    (rendered by `gfss-bench show --out`) is embedded in its group."""
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="note">Generated {escape(generated)} from {board.num_results} stored results. mIoU in %: '
             "fold means ± std over runs; mean = (base + novel) / 2 and HM = harmonic mean of the fold means. "
             "Bold: best complete, non-oracle row of the newest versions. Click a column header to sort.</p>"]
    if not board.groups:
        parts.append("<p>No results match.</p>")
    if figures and board.groups:
        import matplotlib

        matplotlib.use("Agg")
        from gfss_bench.results.confusion import confusions, summary_figure
        from gfss_bench.results.plots import bars_figure, board_labels, method_styles, tradeoff_figure

        styles = method_styles(board_labels(results)) if results else None
        matrices = confusions(results)
    for group in board.groups:
        parts.append(f"<section><h2>{escape(group.title)}</h2>")
        parts.append(f'<p class="note">{escape(group.versions_text)}</p>')
        parts.append(_group_table(group))
        parts += [f'<p class="note">{escape(note)}</p>' for note in group.notes]
        if figures:
            parts.append('<div class="figures">')
            parts.append(_figure_png(bars_figure(group, group.title),
                                     f"base, novel and HM mIoU per method, {group.title}"))
            parts.append(_figure_png(tradeoff_figure(group, group.title, styles=styles),
                                     f"base vs. novel mIoU with iso-HM curves, {group.title}"))
            for fold in sorted({entry.key[4] for entry in matrices if entry.key[:4] == group.key}):
                entries = sorted((e for e in matrices if e.key == (*group.key, fold)), key=lambda e: e.label)
                parts.append(_figure_png(summary_figure(entries, f"fold {fold}: where novel pixels go"),
                                         f"share of each novel class's pixels predicted as itself, background, a "
                                         f"base class or another novel class, fold {fold}, {group.title}"))
            parts += [_qualitative_png(path, f"{path.name}: rendered by gfss-bench show")
                      for path in _qualitative_files(qualitative_dir, group)]
            parts.append("</div>")
        parts.append("</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
