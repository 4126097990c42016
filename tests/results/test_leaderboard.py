"""Leaderboard features on hand-built results whose numbers are checked by hand."""

import io
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.results.tables import (fold_rows, filter_results, leaderboard, per_class_frame, per_class_matrix,
                                      sort_board)
from gfss_bench.results.store import ResultStore

from .helpers import make_result, two_methods


def test_std_over_runs_is_the_spread_of_fold_mean_replicates():
    board = leaderboard(two_methods()).set_index("method")
    diam = board.loc["diam"]
    # run r: base of fold f is 60 + r + f, so the fold mean of run r is 61.5 + r; novel is 30 + 2r
    assert diam["base_miou"] == pytest.approx(63.5)
    assert diam["novel_miou"] == pytest.approx(34.0)
    assert diam["base_std"] == pytest.approx(math.sqrt(2.5))      # std of 61.5..65.5, ddof=1
    assert diam["novel_std"] == pytest.approx(2 * math.sqrt(2.5))
    hms = [2 * (61.5 + r) * (30 + 2 * r) / (91.5 + 3 * r) for r in range(5)]
    assert diam["hm_std"] == pytest.approx(pd.Series(hms).std(ddof=1))
    assert board.loc["imprint", "base_std"] == pytest.approx(0.0)
    assert diam["git_commit"] == "0123456789" and diam["device"] == "x86_64"


def test_filters_select_benchmark_protocol_shot_method_and_label():
    results = two_methods() + two_methods(shot=5) + two_methods(protocol="standard")
    results.append(make_result("diam", 0, 61, 31, options={"pi_strategy": "uniform"}))
    assert len(filter_results(results, shots=[5])) == 8
    assert len(filter_results(results, protocols=["standard"])) == 8
    assert len(filter_results(results, methods=["imprint"])) == 12
    assert len(filter_results(results, methods=["diam"])) == 13
    assert len(filter_results(results, methods=["diam(pi_strategy=uniform)"])) == 1
    assert filter_results(results, benchmarks=["synthetic10i"]) == []


def test_sort_by_metric_and_name():
    results = two_methods()
    results += [make_result("base", f, 90, 0) for f in range(4)]
    board = leaderboard(results)
    assert list(sort_board(board, "hm")["method"]) == ["diam", "imprint", "base"]
    assert list(sort_board(board, "base")["method"]) == ["base", "diam", "imprint"]
    assert list(sort_board(board, "method")["method"]) == ["base", "diam", "imprint"]
    with pytest.raises(ValueError):
        sort_board(board, "speed")


def test_per_fold_rows_use_each_folds_runs():
    folds = fold_rows(two_methods()).set_index(["method", "fold"])
    assert folds.loc[("diam", 2), "base_miou"] == pytest.approx(64.0)
    assert folds.loc[("diam", 2), "base_std"] == pytest.approx(math.sqrt(2.5))
    assert folds.loc[("diam", 2), "hm_miou"] == pytest.approx(2 * 64 * 34 / 98)


def test_per_class_iou_from_confusion_matrices():
    # synthetic5i fold 0: classes 6..20 are base (episode labels 1..15), 1..5 novel (labels 16..20)
    result = make_result("diam", 0, 60, 30, overrides={(0, 3): None, (1, 3): 40, (2, 16): 90})
    frame = per_class_frame([result]).set_index("class_index")
    assert frame.loc[3, "iou"] == pytest.approx((40 + 60 + 60 + 60) / 4)   # run 0: empty union, skipped
    assert frame.loc[3, "runs_defined"] == 4
    assert frame.loc[3, "class_id"] == 8 and frame.loc[3, "role"] == "base"
    assert frame.loc[16, "iou"] == pytest.approx((30 + 30 + 90 + 30 + 30) / 5)
    assert frame.loc[16, "class_name"] == "synth01" and frame.loc[16, "role"] == "novel"
    # background: 1000 correct pixels; column 0 also receives the 100 - p missed pixels of every class
    missed = [14 * 40 + 5 * 70, 14 * 40 + 60 + 5 * 70, 15 * 40 + 4 * 70 + 10, 15 * 40 + 5 * 70, 15 * 40 + 5 * 70]
    assert frame.loc[0, "role"] == "background"
    assert frame.loc[0, "iou"] == pytest.approx(100 * sum(1000 / (1000 + m) for m in missed) / 5)
    matrix = per_class_matrix(per_class_frame([result, make_result("imprint", 0, 50, 20)]))
    assert list(matrix.columns) == ["diam", "imprint"] and matrix.shape == (21, 2)
    assert matrix.loc[(16, 1, "synth01", "novel"), "imprint"] == pytest.approx(20)


def _store(tmp_path, results):
    store = ResultStore(tmp_path / "results")
    for result in results:
        store.save(result)
    return str(store.root)


def test_report_cli_filters_sort_per_fold_per_class(tmp_path):
    results_dir = _store(tmp_path, two_methods() + two_methods(shot=5)[:3])
    runner = CliRunner()
    out = runner.invoke(cli, ["report", "--results-dir", results_dir, "--shot", "1", "--per-fold", "--per-class",
                              "--sort", "novel"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "63.50 ± 1.58" in out.output and "5-shot" not in out.output
    assert "per fold" in out.output and "per-class IoU" in out.output and "synth01" in out.output
    out = runner.invoke(cli, ["report", "--results-dir", results_dir, "--shot", "5"], terminal_width=200)
    assert "incomplete" in out.output
    csv = runner.invoke(cli, ["report", "--results-dir", results_dir, "--format", "csv", "-m", "imprint",
                              "-k", "1", "--per-fold"]).output
    frame = pd.read_csv(io.StringIO(csv))
    assert len(frame) == 4 and set(frame["method"]) == {"imprint"}
    csv = runner.invoke(cli, ["report", "--results-dir", results_dir, "--format", "csv", "--per-class",
                              "-k", "1", "-m", "diam"]).output
    assert len(pd.read_csv(io.StringIO(csv))) == 4 * 21


def test_pop_convention_tables_show_total(tmp_path):
    results_dir = _store(tmp_path, [make_result("diam", f, 60, 30, convention="pop") for f in range(4)])
    out = CliRunner().invoke(cli, ["report", "--results-dir", results_dir], terminal_width=200)
    assert "total" in out.output and "mIoU with background as a base class" in out.output
