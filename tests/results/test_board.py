"""The leaderboard model decides once; every output shows its decisions. Results describe themselves."""

import dataclasses
import io
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.results import exports
from gfss_bench.results.board import Leaderboard
from gfss_bench.results.describe import described
from gfss_bench.results.html import html_page
from gfss_bench.results.published import published_rows
from gfss_bench.results.store import ResultStore, content_checksum

from .helpers import CURRENT, make_result, two_methods
from .test_exports import latex_unescape

BENCH = "pascal5i"  # has published rows, so the model also holds published and Δ rows


def board_results():
    """Hand-chosen fold means (percent): diam 63.5/34 (mean 48.75, HM 44.29), imprint 50/22, base 90/5
    (mean 47.5). Three rows with higher numbers must never be best: an oracle, an incomplete setting
    (3 of 4 folds) and a result stored before protocol versions (protocol v1)."""
    results = two_methods(benchmark=BENCH, spec_extra=CURRENT)
    results += [make_result("base", f, 90, 5, benchmark=BENCH, spec_extra=CURRENT) for f in range(4)]
    results += [make_result("base", f, 95, 95, benchmark=BENCH, spec_extra=CURRENT, oracle=True, seed=7)
                for f in range(4)]  # another seed: another run id than the plain base rows
    results += [make_result("imprint", f, 96, 96, benchmark=BENCH, spec_extra=CURRENT, options={"rescale": False})
                for f in range(3)]
    results += [make_result("diam", f, 99, 99, benchmark=BENCH) for f in range(4)]  # no versions: protocol v1
    return results


# the bold cells, by hand: base column -> base; novel, mean and HM -> diam
EXPECTED_BEST = {("base", "base_miou"), ("diam", "novel_miou"), ("diam", "mean_miou"), ("diam", "hm_miou")}
METRIC_OF_TITLE = {"base": "base_miou", "novel": "novel_miou", "mean": "mean_miou", "HM": "hm_miou"}


def model_best(board):
    return {(row.label, metric) for group in board.groups for row in group.rows for metric in row.best_metrics}


def test_model_decides_rows_best_and_marks():
    board = Leaderboard.build(board_results(), published=published_rows())
    assert len(board.groups) == 1
    group = board.groups[0]
    assert model_best(board) == EXPECTED_BEST
    rows = {row.label: row for row in group.rows}
    assert [row.kind for row in group.rows] == ["result"] * 6 + ["published"] * 2 + ["delta"]
    assert group.rows[-2].label.startswith("BCM") and group.rows[-1].label == "Δ diam − DIaM (CVPR 2023)"
    assert rows["Δ diam − DIaM (CVPR 2023)"].cells["base_miou"].value == pytest.approx(63.5 - 70.89)
    assert group.rows[5].label == "diam [protocol v1]" and group.rows[5].older_version    # last of the own rows
    assert rows["imprint(rescale=False)"].incomplete and rows["imprint(rescale=False)"].folds_text == "3/4"
    assert rows["base [oracle]"].oracle and rows["diam"].folds_text == "4/4"
    assert any("incomplete: imprint(rescale=False): folds 0,1,2 of 4" == note for note in group.notes)
    assert any(note.startswith("[protocol v1]: evaluated under protocol version 1") for note in group.notes)


def _cells(line: str, separator: str) -> list[str]:
    return [cell.strip() for cell in re.split(separator, line)]


def csv_best(text):
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    return {(row["label"], metric) for _, row in frame.iterrows() for metric in str(row["best"]).split(";") if metric}


def json_best(text):
    data = json.loads(text)
    return {(row["label"], metric) for group in data["groups"] for row in group["rows"]
            for metric in row["best"].split(";") if metric}


def markdown_best(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = _cells(lines[0], r"(?<!\\)\|")[1:-1]
    best = set()
    for line in lines[2:]:
        cells = _cells(line, r"(?<!\\)\|")[1:-1]
        label = re.sub(r"\\(.)", r"\1", cells[0])
        best |= {(label, METRIC_OF_TITLE[title]) for title, cell in zip(header[2:], cells[2:])
                 if cell.startswith("**")}
    return best


def latex_best(text):
    lines = text.splitlines()
    header = _cells(next(line for line in lines if line.startswith("Method &"))[:-2], r"(?<!\\)&")
    best = set()
    for line in lines:
        if not line.endswith(r"\\") or line.startswith("Method &"):
            continue
        cells = _cells(line[:-2], r"(?<!\\)&")
        label = latex_unescape(cells[0]).replace("$^\\dagger$", "")
        best |= {(label, METRIC_OF_TITLE[title]) for title, cell in zip(header[1:], cells[1:])
                 if cell.startswith(r"\textbf{")}
    return best


class _TableCells(HTMLParser):
    """(header texts, rows of (text, class) cells) of the first table of a page."""

    def __init__(self):
        super().__init__()
        self.header, self.rows, self._cell, self._in = [], [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell, self._in = ["", dict(attrs).get("class") or ""], tag

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            (self.header if self._in == "th" else self.rows[-1]).append(tuple(self._cell))
            self._cell = None


def html_best(text):
    parser = _TableCells()
    parser.feed(text)
    titles = [t for t, _ in parser.header]
    return {(row[0][0], METRIC_OF_TITLE[titles[i]]) for row in parser.rows if row
            for i, (_, css) in enumerate(row) if css == "best"}


def test_every_format_shows_the_models_bold_cells(tmp_path):
    results = board_results()
    board = Leaderboard.build(results, published=published_rows())
    assert model_best(board) == EXPECTED_BEST
    assert csv_best(exports.aggregated_csv(board)) == EXPECTED_BEST
    assert json_best(exports.json_export(board, results)) == EXPECTED_BEST
    assert markdown_best(exports.markdown(board, std=True)) == EXPECTED_BEST
    assert latex_best(exports.latex(board, std=True)) == EXPECTED_BEST
    assert html_best(html_page(board, figures=False)) == EXPECTED_BEST
    # the CLI builds the same model: its outputs agree too
    store = ResultStore(tmp_path)
    for result in results:
        store.save(result)
    runner = CliRunner()
    invoke = lambda *args: runner.invoke(cli, [*args, "--results-dir", str(tmp_path), "--published"])
    assert csv_best(invoke("report", "--format", "csv").output) == EXPECTED_BEST
    assert markdown_best(invoke("export", "--format", "markdown").output) == EXPECTED_BEST
    assert json_best(invoke("export", "--format", "json").output) == EXPECTED_BEST


def test_every_format_shows_the_same_rows_and_marks():
    board = Leaderboard.build(board_results(), published=published_rows())
    labels = [row.label for row in board.groups[0].rows]
    markdown = exports.markdown(board)
    latex = exports.latex(board)
    for label in labels:
        assert re.sub(r"\\(.)", r"\1", exports.markdown_escape(label)) == label
        assert exports.markdown_escape(label) in markdown and exports.latex_escape(label) in latex
    assert "| imprint\\(rescale=False\\) | 3/4 (incomplete) |" in markdown
    assert "imprint(rescale=False)$^\\dagger$ &" in latex
    assert "[protocol v1]: evaluated under protocol version 1" in markdown.replace("\\", "")
    csv = pd.read_csv(io.StringIO(exports.aggregated_csv(board)))
    assert list(csv["label"]) == labels
    assert csv.set_index("label").loc["diam [protocol v1]", "protocol_version"] == 1


def test_older_protocol_and_method_versions_never_share_a_row(tmp_path):
    """A hand-made schema-1 file (spec without versions) beside protocol-v2 results of two diam versions."""
    store = ResultStore(tmp_path)
    for fold in range(4):
        old = make_result("diam", fold, 99, 99)
        old = dict(old, schema_version=1)
        old["checksum"] = content_checksum(old)
        (tmp_path / f"{old['run_id']}.json").write_text(json.dumps(old))
        store.save(make_result("diam", fold, 60, 30, spec_extra=dict(CURRENT, method_version=2)))
        store.save(make_result("diam", fold, 70, 40, spec_extra=CURRENT))            # method version 1
    results, problems = store.load_all()
    assert problems == [] and len(results) == 12
    rows = {row.label: row for row in Leaderboard.build(results).groups[0].rows}
    assert set(rows) == {"diam [method v2]", "diam [method v1]", "diam [method v1] [protocol v1]"}
    assert rows["diam [method v2]"].cells["base_miou"].value == pytest.approx(60)        # never averaged together
    assert rows["diam [method v1]"].older_version and rows["diam [method v1] [protocol v1]"].older_version
    assert model_best(Leaderboard.build(results)) == {("diam [method v2]", m)
                                                      for m in ("base_miou", "novel_miou", "mean_miou", "hm_miou")}
    out = CliRunner().invoke(cli, ["report", "--results-dir", str(tmp_path)], terminal_width=250)
    assert out.exit_code == 0, out.output
    assert "diam [method v1] [protocol v1]" in out.output and "[protocol v1]: evaluated under protocol" in out.output
    assert "[method vN]: an older version of the method" in out.output


def test_other_evaluation_settings_never_share_a_row():
    """--queries (and any other evaluation setting) is in the run id; the report keeps such results apart and
    names the differing setting, only where a table holds several values of it."""
    evaluation = {"image_size": 97, "min_support_pixels": 887, "max_queries": None, "support_source": "val",
                  "single_novel_supports": True}
    results = []
    for fold in range(4):
        results.append(make_result("diam", fold, 70, 40, spec_extra=dict(CURRENT, evaluation=evaluation)))
        results.append(make_result("diam", fold, 50, 20, spec_extra=dict(
            CURRENT, evaluation=dict(evaluation, max_queries=4))))
        results.append(make_result("bcm", fold, 60, 30, shot=5, spec_extra=dict(CURRENT, evaluation=evaluation)))
    board = Leaderboard.build(results)
    one_shot, five_shot = board.groups
    rows = {row.label: row for row in one_shot.rows}
    assert set(rows) == {"diam [max_queries=None]", "diam [max_queries=4]"}
    assert rows["diam [max_queries=4]"].cells["base_miou"].value == pytest.approx(50)  # never averaged together
    assert not rows["diam [max_queries=4]"].incomplete
    assert [row.label for row in five_shot.rows] == ["bcm"]  # one setting in its table: no mark


def plugin_results():
    """A method that is not registered, on a benchmark that is not registered, with its own description."""
    info = {"name": "tiny-yaml", "description": "6 classes", "num_folds": 2,
            "class_names": ["a", "b", "c", "d", "e", "f"], "fold_novel_classes": [[1, 2, 3], [4, 5, 6]]}
    results = []
    for fold in range(2):
        result = make_result("nearest-proto", fold, 55, 25, spec_extra=CURRENT,
                             options={"temperature": 0.5},
                             extra={"method_label": "nearest-proto(temperature=0.5)", "benchmark_info": info})
        result["spec"]["benchmark"] = "tiny-yaml"
        results.append(result)
    return results


def test_unregistered_method_and_benchmark_still_report_export_and_plot(tmp_path):
    store = ResultStore(tmp_path / "results")
    for result in plugin_results():
        store.save(result)
    runner = CliRunner()
    args = ["--results-dir", str(store.root)]
    out = runner.invoke(cli, ["report", *args], terminal_width=250)
    assert out.exit_code == 0, out.output
    assert "nearest-proto(temperature=0.5)" in out.output and "2/2" in out.output and "incomplete" not in out.output
    assert "tiny-yaml, practical protocol, 1-shot" in out.output
    csv = pd.read_csv(io.StringIO(runner.invoke(cli, ["export", *args, "--aggregated"]).output))
    assert list(csv["label"]) == ["nearest-proto(temperature=0.5)"] and bool(csv.loc[0, "complete"])
    assert csv.loc[0, "base_miou"] == pytest.approx(55) and csv.loc[0, "num_folds"] == 2
    for fmt in ("latex", "markdown", "json", "html"):
        result = runner.invoke(cli, ["export", *args, "--format", fmt, "--out", str(tmp_path / f"board.{fmt}")])
        assert result.exit_code == 0, result.output
        assert "nearest-proto" in (tmp_path / f"board.{fmt}").read_text()
    result = runner.invoke(cli, ["plot", *args, "--kind", "bars", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0 and len(list((tmp_path / "plots").glob("bars-tiny-yaml-*.png"))) == 1
    out = runner.invoke(cli, ["report", *args, "-m", "nearest-proto(temperature=0.5)", "--format", "csv"]).output
    assert len(pd.read_csv(io.StringIO(out))) == 1


def test_labels_and_fold_counts_come_from_the_stored_results(tmp_path, monkeypatch):
    """Changing the registries (diam's default, synthetic5i's folds) changes nothing in any output."""
    from gfss_bench.methods import METHODS
    from gfss_bench.protocols import BENCHMARKS

    store = ResultStore(tmp_path)
    info = {"name": "synthetic5i", "num_folds": 4}
    for fold in range(4):
        store.save(make_result("diam", fold, 60, 30, options={"pi_strategy": "uniform"}, spec_extra=CURRENT,
                               extra={"method_label": "diam(pi_strategy=uniform)", "benchmark_info": info}))
    runner = CliRunner()
    commands = [["report"], ["report", "--format", "csv"], ["export", "--format", "markdown"],
                ["export", "--format", "latex"]]
    before = [runner.invoke(cli, [*c, "--results-dir", str(tmp_path)], terminal_width=250).output for c in commands]
    assert "diam(pi_strategy=uniform)" in before[0] and "4/4" in before[0]

    diam = METHODS.get("diam")
    changed = dataclasses.make_dataclass("ChangedDiam", [("pi_strategy", str, "uniform")], bases=(diam,), frozen=True)
    monkeypatch.setitem(METHODS._entries, "diam", changed)
    bench = BENCHMARKS.get("synthetic5i")
    monkeypatch.setitem(BENCHMARKS._entries, "synthetic5i",
                        dataclasses.replace(bench, fold_novel_classes=bench.fold_novel_classes[:2]))
    assert METHODS.get("diam")().options()["pi_strategy"] == "uniform" and BENCHMARKS.get("synthetic5i").num_folds == 2
    after = [runner.invoke(cli, [*c, "--results-dir", str(tmp_path)], terminal_width=250).output for c in commands]
    assert after == before


def test_old_results_fall_back_to_what_they_hold():
    """Schema-1 results: the label shows the options that differ among the stored settings of a method;
    the fold count is (base + novel) / novel; the versions are protocol 1, method 1, independent episodes."""
    results = [make_result("diam", 0, 60, 30, options={"pi_strategy": "self", "iterations": 100}),
               make_result("diam", 0, 61, 31, options={"pi_strategy": "uniform", "iterations": 100}),
               make_result("imprint", 0, 50, 20, options={"rescale": True})]
    labels = [r["method_label"] for r in described(results)]
    assert labels == ["diam(pi_strategy=self)", "diam(pi_strategy=uniform)", "imprint"]
    assert all(r["benchmark_info"]["num_folds"] == 4 for r in described(results))   # (15 + 5) / 5
    assert described(described(results)) == described(results)                        # already described: unchanged
    row = Leaderboard.build(results).groups[0].rows[0]
    assert row.details["protocol_version"] == 1 and row.details["episodes"] == "independent"
    assert row.folds_text == "1/4" and row.incomplete


def test_method_label_shows_options_that_differ_from_the_given_defaults():
    from gfss_bench.results.describe import method_label

    defaults = {"lr": 0.00125, "iterations": 100, "loss_weights": [100, 1]}
    options = {"lr": 0.5, "iterations": 100, "loss_weights": (100.0, 1.0)}
    assert method_label("diam", options, defaults) == "diam(lr=0.5)"
    assert method_label("diam", {"lr": 0.00125, "iterations": 7, "extra": 1}, defaults) == "diam(iterations=7)"


def test_compare_never_pairs_or_pools_different_protocol_versions():
    from gfss_bench.results.compare import paired_differences, summarize

    results = [make_result("diam", 0, 60, 35), make_result("imprint", 0, 60, 30),                   # protocol v1
               make_result("diam", 0, 60, 32, spec_extra=CURRENT),
               make_result("imprint", 0, 60, 30, spec_extra=CURRENT)]
    pairs, _ = paired_differences(results, "diam", "imprint")
    assert len(pairs) == 10
    novel = summarize(pairs).set_index(["protocol_version", "metric"])["mean"]
    current = CURRENT["protocol_version"]
    assert novel[(1, "novel")] == pytest.approx(5) and novel[(current, "novel")] == pytest.approx(2)
