"""Figures checked by their content: bars, points, lines and heat-map cells."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.image import AxesImage

from gfss_bench.cli import cli
from gfss_bench.results.plots import (OKABE_ITO, bars_figure, class_heatmap_figure, make_figures, shots_figure,
                                      tradeoff_figure)
from gfss_bench.results.board import Leaderboard
from gfss_bench.results.tables import per_class_frame
from gfss_bench.results.store import ResultStore

from .helpers import make_result, two_methods


def test_grouped_bars_three_per_method_with_values():
    group = Leaderboard.build(two_methods()).groups[0]
    ax = bars_figure(group).axes[0]
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == 3 and all(len(c) == 2 for c in containers)   # base/novel/HM x 2 methods
    heights = {c.get_label(): [p.get_height() for p in c] for c in containers}
    assert heights["base mIoU"] == pytest.approx([63.5, 50.0])             # diam first (higher HM)
    assert heights["novel mIoU"] == pytest.approx([34.0, 22.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["diam", "imprint"]
    assert ax.get_ylabel() == "mIoU (%)"


def test_novel_vs_shots_one_point_per_shot():
    results = two_methods() + two_methods(shot=5)
    board = Leaderboard.build(results)
    ax = shots_figure(board.groups).axes[0]
    series = {c.get_label(): c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert sorted(series) == ["diam", "imprint"]
    assert list(series["diam"].get_xdata()) == [1, 5]
    assert list(series["imprint"].get_ydata()) == pytest.approx([22.0, 22.0])
    assert ax.get_xlabel().startswith("shots")


def test_tradeoff_points_and_iso_hm_curves():
    group = Leaderboard.build(two_methods()).groups[0]
    ax = tradeoff_figure(group, iso_hm=(20, 40, 60)).axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 2
    offsets = {c.get_label(): tuple(c.get_offsets()[0]) for c in points}
    assert offsets["diam"] == pytest.approx((63.5, 34.0))
    iso = [line for line in ax.get_lines() if line.get_gid() == "iso-hm"]
    assert len(iso) == 3
    base, novel = iso[1].get_xdata(), iso[1].get_ydata()                   # HM = 40 everywhere on the curve
    assert np.allclose(2 * base * novel / (base + novel), 40)
    for i, collection in enumerate(points):                                # Okabe-Ito colours
        assert tuple(collection.get_facecolor()[0][:3]) == pytest.approx(matplotlib.colors.to_rgb(OKABE_ITO[i]))


def test_class_heatmap_cells():
    results = [make_result("diam", 0, 60, 30, overrides={(0, 16): 80}), make_result("imprint", 0, 50, 20)]
    frame = per_class_frame(results)
    ax = class_heatmap_figure(frame).axes[0]
    image = [a for a in ax.get_images() if isinstance(a, AxesImage)][0]
    data = image.get_array()
    assert data.shape == (2, 21)                                           # methods x classes (with background)
    assert data[0, 16] == pytest.approx((80 + 4 * 30) / 5) and data[1, 1] == pytest.approx(50)
    bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["synth01", "synth02", "synth03", "synth04", "synth05"]


def test_make_figures_and_plot_cli_write_files(tmp_path):
    results = two_methods() + two_methods(shot=5)
    names = [stem for stem, _ in make_figures(results)]
    assert sum(n.startswith("bars-") for n in names) == 2 and sum(n.startswith("classes-") for n in names) == 8
    assert sum(n.startswith("shots-") for n in names) == 1
    store = ResultStore(tmp_path / "results")
    for result in two_methods()[:2]:
        store.save(result)
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        out = CliRunner().invoke(cli, ["plot", "--results-dir", str(store.root), "--kind", "bars", "--kind", "classes",
                                       "--format", fmt, "--out", str(tmp_path / fmt)])
        assert out.exit_code == 0, out.output
        files = sorted((tmp_path / fmt).iterdir())
        assert [f.name.split("-")[0] for f in files] == ["bars", "classes"]
        assert all(f.read_bytes().startswith(magic) for f in files)
