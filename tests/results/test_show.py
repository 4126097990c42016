"""`show`: the chosen queries' predictions recomputed from the stored specs, drawn panel by panel through one
palette; and `plot --kind confusion`."""

import io

import numpy as np
from click.testing import CliRunner
from PIL import Image

from gfss_bench.cli import cli
from gfss_bench.data.datasets import open_split
from gfss_bench.data.transforms import preprocess, resized_shape
from gfss_bench.evaluation.predict import recompute
from gfss_bench.protocols import get_benchmark
from gfss_bench.results.confusion import confusions, novel_summary, row_normalised
from gfss_bench.results.qualitative import figure, palette
from gfss_bench.results.store import ResultStore
from gfss_bench.results.tables import filter_results


def _stored(folder):
    results, problems = ResultStore(folder).load_all()
    assert not problems
    return sorted(filter_results(results), key=lambda r: r["spec"]["method"])  # base, imprint


def test_show_draws_the_requested_panels_and_the_true_labels(per_query_results):
    folder, specs, loader = per_query_results
    results = _stored(folder)
    store = ResultStore(folder)
    records = {r["run_id"]: store.load_query_records(r)[1] for r in results}
    names = [records[results[1]["run_id"]]["queries"][i]["query"] for i in (0, 3)]
    warnings = []
    shown = recompute(results, 1, names, records, log=warnings.append, segmenter_loader=loader)
    assert warnings == []  # the recomputed predictions are the scored ones
    drawn = figure(shown, width_in=7.0)
    columns = ["image", "ground truth", "base", "imprint"]
    axes = drawn.get_axes()
    assert len(axes) == max(len(columns), len(shown.supports)) + 2 * len(columns)
    query_axes = axes[-2 * len(columns):]
    assert [ax.get_title() for ax in query_axes[:len(columns)]] == columns
    assert [ax.get_ylabel() for ax in query_axes[::len(columns)]] == names
    benchmark = get_benchmark("synthetic5i")
    split = open_split(benchmark, "val")
    lut = benchmark.episode_label_lut(0)
    colours = palette(len(benchmark.base_classes(0)), len(benchmark.novel_classes(0)))
    for row, name in enumerate(names):
        image, label = split.load(split.names.index(name))
        height, width = resized_shape(*label.shape, 33)
        expected = lut[preprocess(image, label, 33)[1].numpy()[:height, :width]]
        drawn_truth = query_axes[row * len(columns) + 1].get_images()[0].get_array()
        assert np.array_equal(np.asarray(drawn_truth), colours[expected])
    assert {c for c in np.unique(expected)} & {255}  # ignore borders are drawn too (white)
    assert not any(ax.get_title().startswith("support") for ax in figure(shown, header=False).get_axes())
    without_base = recompute(results[1:], 1, names, records, segmenter_loader=loader, base_column=True)
    assert without_base.methods == ["base", "imprint"]  # the base column needs no stored base result
    for computed, stored in zip(without_base.queries, shown.queries):
        assert np.array_equal(computed.predictions["base"], stored.predictions["base"])


def test_palette_keeps_novel_apart_from_base_and_ignore_distinct():
    colours = palette(15, 5)
    base, novel = colours[1:16], colours[16:21]
    distance = np.linalg.norm(base[:, None] - novel[None], axis=-1)
    assert distance.min() > 0.25
    assert len({tuple(c) for c in colours[[0, *range(1, 21), 255]]}) == 22


def test_show_cli_writes_a_figure_and_refuses_bad_choices(per_query_results, tmp_path):
    folder = per_query_results[0]
    out = tmp_path / "show-synthetic5i-practical-1shot.png"  # where `export --format html` picks it up
    result = CliRunner().invoke(cli, ["show", "--results-dir", str(folder), "-m", "base", "-m", "imprint",
                                      "--run", "0", "--worst", "2", "--out", str(out), "--no-header"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] == 1400  # 7 in at 200 dpi
    page = tmp_path / "page.html"
    exported = CliRunner().invoke(cli, ["export", "--results-dir", str(folder), "--format", "html", "--out",
                                        str(page)])
    assert exported.exit_code == 0, exported.output
    html = page.read_text()
    assert "pixels predicted as itself, background" in html and f'alt="{out.name}: rendered by gfss-bench show"' in html
    for args, message in ((["--worst", "2", "--out", "x.txt"], ".png, .pdf or .svg"),
                          (["--out", str(out)], "choose the queries one way"),
                          (["--query", "nope", "--out", str(out)], "is not among the queries")):
        bad = CliRunner().invoke(cli, ["show", "--results-dir", str(folder), "-m", "imprint", *args])
        assert bad.exit_code != 0 and message in str(bad.exception or bad.output)


def test_confusion_rows_sum_to_one_and_summaries_add_up(per_query_results):
    results = _stored(per_query_results[0])
    for entry in confusions(results):
        shares = row_normalised(entry.matrix)
        has_pixels = entry.matrix.sum(1) > 0
        assert np.allclose(shares[has_pixels].sum(1), 1.0) and np.isnan(shares[~has_pixels]).all()
        summary = novel_summary(entry)
        totals = summary[["itself", "background", "base", "other_novel"]].sum(axis=1)
        assert np.allclose(totals[has_pixels[entry.num_base + 1:]], 100)


def test_plot_confusion_cli_files_open(per_query_results, tmp_path):
    result = CliRunner().invoke(cli, ["plot", "--results-dir", str(per_query_results[0]), "--kind", "confusion",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.iterdir())
    assert [f.name.split("-")[0] for f in files] == ["confusion", "novel"]
    for path in files:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
