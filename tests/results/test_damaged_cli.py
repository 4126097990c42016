"""`report`, `export` and `plot` with a damaged results folder (each bad file skipped with its reason, the rest
shown), a missing results folder, an --out into a missing folder, and names with `$` drawn as plain text."""

import io
import os

import matplotlib

matplotlib.use("Agg")

import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.results.plots import make_figures
from gfss_bench.results.store import ResultStore

from .helpers import make_result, two_methods


@pytest.fixture
def damaged_store(tmp_path):
    store = ResultStore(tmp_path / "results")
    for result in two_methods():
        store.save(result)
    root = store.root
    (root / "deep.json").write_text("[" * 200000)
    (root / "torn.json").write_text(store.path_for(two_methods()[0]["run_id"]).read_text()[:50])
    os.mkfifo(root / "fifo.json")
    (root / "zero.json").symlink_to("/dev/zero")
    return store


COMMANDS = [["report"], ["report", "--per-class", "--per-fold"], ["export", "--format", "csv"],
            ["export", "--format", "json"], ["export", "--format", "html"], ["plot", "--kind", "bars"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_files_are_skipped_with_their_reason(damaged_store, tmp_path, command):
    extra = ["--out", str(tmp_path / "plots")] if command[0] == "plot" else []
    result = CliRunner().invoke(cli, [*command, "--results-dir", str(damaged_store.root), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    for name, reason in (("deep.json", "nested deeper"), ("torn.json", "JSON"), ("fifo.json", "FIFO"),
                         ("zero.json", "character device")):
        assert any(name in line and reason in line for line in result.stderr.splitlines()), (name, result.stderr)
    if command[0] == "plot":
        assert len(list((tmp_path / "plots").iterdir())) == 1
    else:
        assert "imprint" in result.stdout  # the good results are all there


def test_missing_results_folder_is_named(tmp_path):
    missing = tmp_path / "nonexistent"
    for command in (["report"], ["export"], ["plot", "--out", str(tmp_path / "plots")]):
        result = CliRunner().invoke(cli, [*command, "--results-dir", str(missing)])
        assert isinstance(result.exception, GFSSError)
        assert f"--results-dir {missing} does not exist" in str(result.exception)


def test_export_out_into_a_missing_folder_is_an_error(damaged_store, tmp_path):
    out = tmp_path / "nonexistent" / "dir" / "x.html"
    result = CliRunner().invoke(cli, ["export", "--results-dir", str(damaged_store.root), "--format", "html",
                                      "--out", str(out)])
    assert isinstance(result.exception, GFSSError)
    assert f"the folder {out.parent} does not exist" in str(result.exception)
    assert not (tmp_path / "nonexistent").exists()  # no folder created
    written = tmp_path / "x.md"
    result = CliRunner().invoke(cli, ["export", "--results-dir", str(damaged_store.root), "--format", "markdown",
                                      "--out", str(written)])
    assert result.exit_code == 0 and "imprint" in written.read_text()
    umask = os.umask(0o022)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600


DOLLARS = "a$x^{$b"  # not valid mathtext: matplotlib fails on it unless it is drawn as plain text


def dollar_results():
    results = []
    for shot in (1, 5):
        for fold in (0,):
            for method, label, base in (("diam", "my $method$ (v$2)", 60), ("imprint", "imprint", 50)):
                result = make_result(method, fold, base, 30, runs=2, shot=shot, extra={"method_label": label})
                result["class_names"][1] = DOLLARS
                results.append(result)
    return results


def test_dollar_signs_in_labels_and_class_names_are_plain_text():
    results = dollar_results()
    figures = dict(make_figures(results))
    assert {name.split("-")[0] for name in figures} == {"bars", "tradeoff", "shots", "classes", "confusion", "novel"}
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text kept as text in the SVG
        for name, figure in figures.items():
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg")
            drawn = buffer.getvalue()
            if name.startswith(("classes", "confusion")):
                assert DOLLARS in drawn and "my $method$ (v$2)" in drawn
            elif not name.startswith("classes"):
                assert "my $method$ (v$2)" in drawn, name


def test_dollar_signs_through_plot_and_html_export(tmp_path):
    store = ResultStore(tmp_path / "results")
    for result in dollar_results():
        store.save(result)
    plotted = CliRunner().invoke(cli, ["plot", "--results-dir", str(store.root), "--out", str(tmp_path / "plots")])
    assert plotted.exit_code == 0, (plotted.output, plotted.exception)
    kinds = [path.name.split("-")[0] for path in (tmp_path / "plots").iterdir()]
    assert sorted(kinds) == sorted(["bars", "tradeoff", "classes", "confusion", "novel"] * 2 + ["shots"])  # x 2 shots
    page = CliRunner().invoke(cli, ["export", "--results-dir", str(store.root), "--format", "html"])
    assert page.exit_code == 0, (page.output, page.exception)
    assert "my $method$ (v$2)" in page.stdout
    assert page.stdout.count("data:image/png;base64,") == 2 * 3  # bars, trade-off, novel summary x 2 shots
