"""Exports parsed back: CSV, LaTeX (escaping, bold best, std), Markdown, JSON."""

import io
import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.results import exports
from gfss_bench.results.board import Leaderboard
from gfss_bench.results.store import ResultStore

from .helpers import make_result, two_methods

NASTY = "a&b%c_d#e$f{g}h~i^j\\k<l>m|n*o`p[q]"


def nasty_results():
    """two_methods plus a diam setting whose option value holds every special character (3 folds only)."""
    return two_methods() + [make_result("diam", f, 40, 10, options={"pi_strategy": NASTY}) for f in range(3)]


def _store(tmp_path, results):
    store = ResultStore(tmp_path / "results")
    for result in results:
        store.save(result)
    return str(store.root)


def latex_unescape(text: str) -> str:
    text = re.sub(r"\\text(backslash|asciitilde|asciicircum|less|greater|bar)\{\}",
                  lambda m: {"backslash": "\\", "asciitilde": "~", "asciicircum": "^", "less": "<",
                             "greater": ">", "bar": "|"}[m.group(1)], text)
    return re.sub(r"\\([&%$#_{}])", r"\1", text)


def test_tidy_and_aggregated_csv(tmp_path):
    results_dir = _store(tmp_path, two_methods())
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(cli, ["export", "--results-dir", results_dir, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tidy = pd.read_csv(out)
    assert len(tidy) == 2 * 4 * 5                             # method x fold x run
    row = tidy[(tidy["method"] == "diam") & (tidy["fold"] == 2) & (tidy["run"] == 3)].iloc[0]
    assert row["base_miou"] == pytest.approx(65.0) and row["novel_miou"] == pytest.approx(36.0)
    assert json.loads(row["method_options"]) == {}
    aggregated = pd.read_csv(tmp_path / "table-aggregated.csv").set_index("method")
    assert aggregated.loc["diam", "base_miou"] == pytest.approx(63.5)
    assert aggregated.loc["diam", "base_std"] == pytest.approx(1.58, abs=0.01)
    assert list(aggregated.index) == ["diam", "imprint"]


def test_latex_booktabs_bold_std_and_escaping():
    text = exports.latex(Leaderboard.build(nasty_results()), std=True)
    assert text.count(r"\begin{table}") == 1 and r"\toprule" in text and r"\bottomrule" in text
    rows = [line for line in text.splitlines() if line.endswith(r"\\") and not line.startswith("Method")]
    assert len(rows) == 3
    for line in rows:                                    # exactly 4 column separators: no stray '&'
        assert len(re.findall(r"(?<!\\)&", line)) == 4
    by_method = {latex_unescape(line.split(" & ")[0]): line for line in rows}
    nasty_label = f"diam(pi_strategy={NASTY})$^\\dagger$"
    assert nasty_label in by_method                     # escaped, and recovered exactly
    assert r"\textbf{63.50}{\scriptsize\,$\pm$\,1.58}" in by_method["diam"]
    assert r"\textbf" not in by_method[nasty_label]     # incomplete rows are never "best"
    assert "incomplete" in text
    body = text.split(r"\midrule", 1)[1]
    stripped = re.sub(r"\\[a-zA-Z]+|\\[&%$#_{}\\,]|\$\^|\$\\pm\$|\$", "", body)
    assert not re.search(r"[%#_~^]", stripped)           # nothing special left unescaped
    assert r"\pm" not in exports.latex(Leaderboard.build(nasty_results()), std=False)


def test_markdown_tables_parse_back():
    text = exports.markdown(Leaderboard.build(nasty_results()), std=True)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header, separator, rows = lines[0], lines[1], lines[2:]
    assert set(separator.replace("|", "").replace(":", "").strip()) <= {"-", " "}
    split = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
    assert split(header) == ["Method", "Folds", "base", "novel", "mean", "HM"]
    assert len(rows) == 3 and all(len(split(r)) == 6 for r in rows)
    cells = {re.sub(r"\\(.)", r"\1", split(r)[0]): split(r) for r in rows}
    assert f"diam(pi_strategy={NASTY})" in cells
    assert cells["diam"][2] == "**63.50 ± 1.58**" and cells["imprint"][2] == "50.00 ± 0.00"
    assert "incomplete" in cells[f"diam(pi_strategy={NASTY})"][1]


def test_json_export_is_strict_and_complete():
    data = json.loads(exports.json_export(Leaderboard.build(nasty_results()), nasty_results()))
    assert len(data["groups"]) == 1
    rows = {row["method"]: row for row in data["groups"][0]["rows"]}
    assert rows["diam"]["base_miou"] == pytest.approx(63.5) and rows["diam"]["complete"] is True
    assert rows["diam"]["total_miou"] is None                      # NaN -> null
    assert rows[f"diam(pi_strategy={NASTY})"]["complete"] is False
    assert len(data["runs"]) == 2 * 20 + 15


def test_export_cli_formats_to_stdout(tmp_path):
    results_dir = _store(tmp_path, two_methods())
    runner = CliRunner()
    for fmt, probe in (("latex", r"\toprule"), ("markdown", "| Method |"), ("json", '"groups"')):
        result = runner.invoke(cli, ["export", "--results-dir", results_dir, "--format", fmt, "-m", "diam"])
        assert result.exit_code == 0 and probe in result.output and "imprint" not in result.output
    aggregated = runner.invoke(cli, ["export", "--results-dir", results_dir, "--aggregated"]).output
    assert len(pd.read_csv(io.StringIO(aggregated))) == 2
