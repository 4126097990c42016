"""Paired comparison (checked against a hand computation) and the published reference numbers."""

import math

import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.results.compare import confidence_interval, paired_differences, summarize, t_quantile
from gfss_bench.results.published import load_published, published_rows
from gfss_bench.results.tables import leaderboard
from gfss_bench.results.store import ResultStore

from .helpers import make_result


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (19, 2.0930),
                                         (29, 2.0452), (100, 1.9840)])
def test_t_quantile_matches_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_confidence_interval_by_hand():
    # differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t(0.975, 4) = 2.7764
    interval = confidence_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert interval["mean"] == pytest.approx(3) and interval["sd"] == pytest.approx(math.sqrt(2.5))
    assert (interval["low"], interval["high"]) == pytest.approx((3 - half, 3 + half), abs=1e-5)
    assert interval["significant"]
    assert not confidence_interval([1, -1, 0.5, -0.5, 0])["significant"]


def _pair_results():
    """One fold, 5 runs. A's novel exceeds B's by 1..5 points; base differs by +1,-1,+0.5(rounded),-0.5,0."""
    a = make_result("diam", 0, [60, 59, 61, 60, 60], [31, 32, 33, 34, 35])
    b = make_result("imprint", 0, [59, 60, 60, 61, 60], [30, 30, 30, 30, 30])
    return [a, b]


def test_paired_differences_by_hand():
    pairs, mismatched = paired_differences(_pair_results(), "diam", "imprint")
    assert mismatched == 0 and len(pairs) == 5
    assert list(pairs["novel"]) == pytest.approx([1, 2, 3, 4, 5])
    assert list(pairs["base"]) == pytest.approx([1, -1, 1, -1, 0])
    summary = summarize(pairs).set_index("metric")
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert summary.loc["novel", "low"] == pytest.approx(3 - half, abs=1e-5)
    assert summary.loc["novel", "significant"]
    assert summary.loc["base", "mean"] == pytest.approx(0) and not summary.loc["base", "significant"]
    hm_a = [2 * b * n / (b + n) for b, n in zip([60, 59, 61, 60, 60], [31, 32, 33, 34, 35])]
    hm_b = [2 * b * 30 / (b + 30) for b in [59, 60, 60, 61, 60]]
    assert list(pairs["hm"]) == pytest.approx([x - y for x, y in zip(hm_a, hm_b)])


def test_runs_with_different_supports_are_not_paired():
    a, b = _pair_results()
    b["runs"][0]["support_images"] = [["other"]]
    pairs, mismatched = paired_differences([a, b], "diam", "imprint")
    assert mismatched == 1 and len(pairs) == 4


def test_compare_cli(tmp_path):
    store = ResultStore(tmp_path)
    for result in _pair_results():
        store.save(result)
    out = CliRunner().invoke(cli, ["report", "--results-dir", str(tmp_path), "--compare", "diam", "imprint"],
                             terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "diam better" in out.output and "not significant" in out.output
    assert "+3.00" in out.output


def test_published_data_equals_facts_section_7():
    expected = {
        ("diam", "pascal5i", 1): (70.89, 35.11, 53.00), ("diam", "pascal5i", 5): (70.85, 55.31, 63.08),
        ("diam", "coco20i", 1): (48.28, 17.22, 32.75), ("diam", "coco20i", 5): (48.37, 28.73, 38.55),
        ("diam", "pascal10i", 1): (70.26, 31.29, 50.77), ("diam", "pascal10i", 5): (70.25, 51.89, 61.07),
        ("bcm", "pascal5i", 1): (71.15, 41.12, 56.14), ("bcm", "pascal5i", 5): (71.23, 55.37, 63.30),
        ("bcm", "coco20i", 1): (49.43, 18.28, 33.85), ("bcm", "coco20i", 5): (49.88, 30.57, 40.23),
        ("bcm", "pascal10i", 1): (70.08, 35.95, 53.01), ("bcm", "pascal10i", 5): (70.12, 53.48, 61.80),
    }
    expected_pop = {("pascal5i", 1): (73.81, 36.74, 64.98), ("pascal5i", 5): (74.74, 56.55, 70.41),
                    ("coco20i", 1): (54.24, 23.89, 46.75), ("coco20i", 5): (54.59, 36.77, 50.19)}
    entries = load_published()
    assert len(entries) == len(expected) + len(expected_pop)
    for entry in entries:
        if entry["method"] == "pop":
            assert entry["convention"] == "pop"
            assert (entry["base"], entry["novel"], entry["total"]) == expected_pop[(entry["benchmark"], entry["shot"])]
        else:
            assert entry["convention"] == "diam"
            assert (entry["base"], entry["novel"], entry["mean"]) == expected[
                (entry["method"], entry["benchmark"], entry["shot"])]
    rows = published_rows()
    diam = rows[(rows["method"] == "diam") & (rows["benchmark"] == "pascal5i") & (rows["shot"] == 1)].iloc[0]
    assert diam["hm_miou"] == pytest.approx(2 * 70.89 * 35.11 / (70.89 + 35.11))


def test_report_published_rows_and_gap(tmp_path):
    store = ResultStore(tmp_path)
    for fold in range(4):
        store.save(make_result("diam", fold, 70, 35, benchmark="pascal5i"))
    out = CliRunner().invoke(cli, ["report", "--results-dir", str(tmp_path), "--published"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "DIaM (CVPR 2023) (published)" in out.output and "BCM (NeurIPS 2024) (published)" in out.output
    assert "POP" not in out.output            # other convention/protocol: never in this table
    assert "-0.89" in out.output and "-0.11" in out.output  # gap diam - DIaM: 70 - 70.89, 35 - 35.11
    board = leaderboard([make_result("diam", f, 70, 35, benchmark="pascal5i") for f in range(4)])
    assert board.loc[0, "complete"]
