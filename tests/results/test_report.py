import io

import pandas as pd
import pytest

from gfss_bench.results.board import Leaderboard
from gfss_bench.results.describe import method_label
from gfss_bench.results.exports import aggregated_csv
from gfss_bench.results.tables import leaderboard


def fake_result(method, fold, base, novel, options=None, benchmark="synthetic5i", shot=1, convention="diam"):
    spec = {"method": method, "method_options": options or {}, "benchmark": benchmark, "fold": fold,
            "protocol": "practical", "shot": shot, "runs": 5, "seed": 2023, "convention": convention,
            "segmenter": "builtin", "device": "cpu"}
    aggregate = {"base": {"mean": base, "std": 0.01}, "novel": {"mean": novel, "std": 0.02}}
    return {"run_id": f"{method}{fold}{shot}{convention}", "spec": spec, "aggregate": aggregate, "oracle": False,
            "num_base": 15, "num_novel": 5}  # a schema-1 result: its fold count is inferred from these


def test_fold_means_hm_and_incomplete_rows():
    results = [fake_result("diam", f, 0.6 + 0.01 * f, 0.3) for f in range(4)]
    results += [fake_result("imprint", f, 0.5, 0.2) for f in range(2)]
    board = leaderboard(results).set_index("method")
    diam = board.loc["diam"]
    assert diam["complete"] and diam["folds"] == "0,1,2,3"
    assert diam["base_miou"] == pytest.approx(61.5)
    assert diam["novel_miou"] == pytest.approx(30.0)
    assert diam["mean_miou"] == pytest.approx((61.5 + 30) / 2)
    assert diam["hm_miou"] == pytest.approx(2 * 61.5 * 30 / 91.5)
    assert not board.loc["imprint"]["complete"]


def test_conventions_and_shots_never_share_a_group():
    results = [fake_result("diam", f, 0.6, 0.3) for f in range(4)]
    results += [fake_result("diam", f, 0.6, 0.3, convention="pop") for f in range(4)]
    results += [fake_result("diam", f, 0.6, 0.4, shot=5) for f in range(4)]
    board = leaderboard(results)
    assert len(board) == 3
    assert set(zip(board["convention"], board["shot"])) == {("diam", 1), ("pop", 1), ("diam", 5)}


def test_csv_columns_and_percent():
    board = Leaderboard.build([fake_result("base", f, 0.7, 0.0) for f in range(4)])
    frame = pd.read_csv(io.StringIO(aggregated_csv(board)))
    for column in ("method", "benchmark", "protocol", "shot", "folds", "base_miou", "novel_miou", "mean_miou",
                   "hm_miou"):
        assert column in frame.columns
    assert frame.loc[0, "base_miou"] == pytest.approx(70.0)
    assert frame.loc[0, "hm_miou"] == pytest.approx(0.0)


def test_method_label_shows_only_non_default_options():
    assert method_label("base", {}) == "base"
    assert method_label("unknown-method", {"x": 1}) == "unknown-method"
