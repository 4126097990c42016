"""Two methods run by the real runner on the synthetic benchmark, then every report, export and plot."""

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner

from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.cli import cli
from gfss_bench.results.store import ResultStore
from tests.evaluation.test_runner import CountingLoader

METHODS = ("base", "imprint")
FOLDS = range(4)
RUNS = 2


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e-results")
    specs = [RunSpec.create(m, "synthetic5i", f, "practical", 1, runs=RUNS, evaluation={"image_size": 33})
             for m in METHODS for f in FOLDS]  # 33x33: the reports are what is tested, not the segmentation
    execute(specs, ResultStore(path), segmenter_loader=CountingLoader())
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_report_and_csv(results_dir):
    table = invoke("report", "--results-dir", str(results_dir))
    assert "base" in table and "imprint" in table and "4/4" in table
    rows = list(csv.DictReader(io.StringIO(invoke("report", "--results-dir", str(results_dir), "--format", "csv"))))
    assert sorted(r["method"] for r in rows) == sorted(METHODS)
    assert all(float(r["novel_miou"]) == 0.0 for r in rows if r["method"] == "base")
    assert all(float(r["novel_miou"]) > 0.0 for r in rows if r["method"] == "imprint")


def test_compare_pairs_every_run(results_dir):
    output = invoke("report", "--results-dir", str(results_dir), "--compare", "imprint", "base")
    assert "imprint" in output and "base" in output
    pairs = len(FOLDS) * RUNS
    assert re.search(rf"novel\s*│\s*{pairs}\s*│", output), output  # every (fold, run) is paired
    assert len(re.findall(r"^│\s*\d\s*│\s*\d\s*│", output, flags=re.M)) == pairs


def test_every_export(results_dir, tmp_path):
    tidy_path = tmp_path / "tidy.csv"
    invoke("export", "--results-dir", str(results_dir), "--format", "csv", "--out", str(tidy_path))
    tidy = list(csv.DictReader(tidy_path.open()))
    assert len(tidy) == len(METHODS) * len(FOLDS) * RUNS
    assert (tmp_path / "tidy-aggregated.csv").exists()
    latex = invoke("export", "--results-dir", str(results_dir), "--format", "latex")
    assert "\\toprule" in latex and "\\textbf{" in latex and "imprint" in latex
    markdown = invoke("export", "--results-dir", str(results_dir), "--format", "markdown")
    assert "| imprint" in markdown or "|imprint" in markdown.replace(" ", "")
    exported = json.loads(invoke("export", "--results-dir", str(results_dir), "--format", "json"))
    assert "imprint" in json.dumps(exported)
    page = tmp_path / "board.html"
    invoke("export", "--results-dir", str(results_dir), "--format", "html", "--out", str(page))
    html = page.read_text()
    assert "<table" in html and "imprint" in html and "http://" not in html.replace("http://www.w3.org", "")


def test_every_plot(results_dir, tmp_path):
    invoke("plot", "--results-dir", str(results_dir), "--out", str(tmp_path), "--format", "png")
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) >= 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_runner_results_describe_themselves(results_dir):
    from gfss_bench.protocols import get_benchmark
    from gfss_bench.results.store import SCHEMA_VERSION

    results, problems = ResultStore(results_dir).load_all()
    assert problems == [] and len(results) == len(METHODS) * len(FOLDS)
    bench = get_benchmark("synthetic5i")
    for result in results:
        assert result["schema_version"] == SCHEMA_VERSION == 3
        assert result["segmenter_label"] == result["spec"]["segmenter"] == "builtin"
        assert result["method_label"] == result["spec"]["method"]          # default options: the bare name
        info = result["benchmark_info"]
        assert info["name"] == "synthetic5i" and info["num_folds"] == 4
        assert info["class_names"] == list(bench.class_names)
        assert info["fold_novel_classes"][result["spec"]["fold"]] == list(bench.novel_classes(result["spec"]["fold"]))
        assert result["spec"]["protocol_version"] >= 2 and "method_version" in result["spec"]
