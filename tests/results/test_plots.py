"""Figures checked by their content: bars, points, lines and heat-map cells."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from click.testing import CliRunner
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


def test_tradeoff_points_error_bars_and_iso_hm_curves():
    group = Leaderboard.build(two_methods()).groups[0]
    ax = tradeoff_figure(group, iso_hm=(20, 40, 60)).axes[0]
    points = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert sorted(points) == ["diam", "imprint"]
    marker = points["diam"].lines[0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((63.5, 34.0))
    assert points["diam"].has_xerr and points["diam"].has_yerr
    iso = [line for line in ax.get_lines() if line.get_gid() == "iso-hm"]
    assert len(iso) == 3
    base, novel = iso[1].get_xdata(), iso[1].get_ydata()                   # HM = 40 everywhere on the curve
    assert np.allclose(2 * base * novel / (base + novel), 40)
    labels = [text for text in ax.texts if text.get_text().startswith("HM")]
    assert len(labels) == 3 and all(text.xy[0] >= 100 and text.get_ha() == "left" for text in labels)  # off curves
    for i, name in enumerate(["diam", "imprint"]):                        # Okabe-Ito colours, in label order
        colour = points[name].lines[0].get_color()
        assert matplotlib.colors.to_rgb(colour) == pytest.approx(matplotlib.colors.to_rgb(OKABE_ITO[i]))


def test_a_method_keeps_its_style_in_every_figure():
    """bcm stored at 1 shot only: imprint must look the same at 1 and 5 shots, and bcm draws no shots line."""
    results = two_methods() + two_methods(shot=5) + [make_result("bcm", f, 70, 40) for f in range(4)]
    figures = dict(make_figures(results, ("tradeoff", "shots")))
    styles = []
    for shot in (1, 5):
        ax = figures[f"tradeoff-synthetic5i-practical-{shot}shot-diam"].axes[0]
        line = next(c for c in ax.containers if c.get_label() == "imprint").lines[0]
        styles.append((matplotlib.colors.to_hex(line.get_color()), line.get_marker()))
    assert styles[0] == styles[1]
    shots = figures["shots-synthetic5i-practical-diam"]
    assert sorted(c.get_label() for c in shots.axes[0].containers) == ["diam", "imprint"]
    assert "bcm" in shots.axes[0].get_legend().get_title().get_text()  # named in the legend note instead


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


def test_heatmap_rows_follow_the_table_and_cells_show_values():
    results = [make_result("imprint", 0, 50, 20), make_result("diam", 0, 60, 30)]  # diam ranks first (higher HM)
    figures = dict(make_figures(results, ("classes",)))
    ax = figures["classes-synthetic5i-practical-1shot-diam-fold0"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["diam", "imprint"]
    values = np.asarray(ax.get_images()[0].get_array())
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == np.isfinite(values).sum()
    assert cells[0, 1] == f"{values[0, 1]:.0f}" == "60"
