"""`report`, `export` and `plot`: stored results as tables, files and figures (no model is run)."""

from __future__ import annotations

from pathlib import Path

import click

from gfss_bench.cli import common
from gfss_bench.cli.common import RESULT_FILTERS, load_results
from gfss_bench.errors import GFSSError

SORT_CHOICES = ["hm", "base", "novel", "mean", "total", "method"]


@click.command()
@RESULT_FILTERS
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--sort", "sort_by", type=click.Choice(SORT_CHOICES), default="hm", show_default=True,
              help="Order rows by this metric (best first) or by method name.")
@click.option("--per-fold", is_flag=True, help="Also show the fold breakdown (mean ± std over each fold's runs).")
@click.option("--per-class", is_flag=True, help="Also show per-class IoU per fold, from the stored confusion matrices.")
@click.option("--published", is_flag=True,
              help="Add the published results (same benchmark, protocol, convention, shot) and the gap to them.")
@click.option("--compare", nargs=2, metavar="A B", default=None,
              help="Paired per-run differences A - B with a 95% t-interval, instead of the leaderboard; with "
                   "--best/--worst N, the N queries where A beats B most (or least).")
@click.option("--per-query", is_flag=True,
              help="Per query of every run: each class present with its intersection and union (csv), or each "
                   "query's mIoU (table).")
@click.option("--worst", type=click.IntRange(min=1), default=None, metavar="N",
              help="Each method's N queries of lowest mIoU (over the classes present in the query).")
@click.option("--best", type=click.IntRange(min=1), default=None, metavar="N",
              help="Each method's N queries of highest mIoU.")
def report(results_dir, benchmarks, protocols, shots, methods, conventions, output_format, sort_by, per_fold,
           per_class, published, compare, per_query, worst, best):
    """Show stored results as a leaderboard (fold means per method, ± std over runs)."""
    from gfss_bench.results import report as rep, tables

    results = load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    if per_query or worst or best:
        _report_queries(results, Path(results_dir).expanduser(), output_format, per_query, worst, best, compare)
        return
    if compare:
        from gfss_bench.results.compare import paired_differences, print_comparison, summarize

        a, b = compare
        pairs, mismatched = paired_differences(results, a, b)
        summary = summarize(pairs)
        if output_format == "csv":
            click.echo(summary.to_csv(index=False, float_format="%.4f"), nl=False)
        else:
            print_comparison(pairs, summary, a, b, mismatched, common.console)
        return
    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.exports import aggregated_csv
    from gfss_bench.results.published import published_rows

    board = Leaderboard.build(results, sort_by, published_rows() if published else None)
    if output_format == "csv":
        if per_class:
            click.echo(tables.per_class_frame(results).to_csv(index=False, float_format="%.2f"), nl=False)
        elif per_fold:
            click.echo(tables.fold_rows(results).to_csv(index=False, float_format="%.2f"), nl=False)
        else:
            click.echo(aggregated_csv(board), nl=False)
        return
    rep.print_leaderboard(board, common.console)
    if per_fold:
        rep.print_per_fold(tables.fold_rows(results), common.console)
    if per_class:
        rep.print_per_class(tables.per_class_frame(results), common.console)


def _report_queries(results, results_dir: Path, output_format: str, per_query: bool, worst, best, compare) -> None:
    """`report --per-query`, `--worst N`, `--best N` (with `--compare A B`: where A beats B most or least)."""
    from gfss_bench.results.queries import compared, extremes, print_query_table, query_counts, query_scores
    from gfss_bench.results.store import ResultStore

    if worst and best:
        raise GFSSError("--worst and --best exclude each other; pass one of them")
    counts, without = query_counts(results, ResultStore(results_dir))
    if without:
        common.err_console.print(f"note: {len(without)} selected result(s) were stored without per-query records "
                                 "(before gfss-bench kept them); they have no per-query rows. Rerun them with "
                                 "--force to record them", highlight=False, markup=False)
    scores = query_scores(counts)
    if per_query and not (worst or best):
        if output_format == "csv":
            click.echo(counts.drop(columns=["position"]).to_csv(index=False, float_format="%.4f"), nl=False)
        else:
            print_query_table(scores, "per-query mIoU (%, over the classes present in each query)", common.console)
        return
    count = worst or best
    if compare:
        frame = compared(scores, *compare, count, best=bool(best))
        title = f"queries where {compare[0]} beats {compare[1]} {'most' if best else 'least'} (mIoU %)"
    else:
        frame = extremes(scores, count, best=bool(best))
        title = f"each method's {count} {'best' if best else 'worst'} queries (mIoU %, over the classes present)"
    if output_format == "csv":
        click.echo(frame.drop(columns=["position"]).to_csv(index=False, float_format="%.4f"), nl=False)
    else:
        print_query_table(frame, title, common.console)


@click.command()
@RESULT_FILTERS
@click.option("--format", "output_format", type=click.Choice(["csv", "latex", "markdown", "json", "html"]),
              default="csv", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of stdout (into an existing folder). For csv, the tidy file goes to PATH and "
                   "the aggregated one to PATH with '-aggregated' added before the suffix.")
@click.option("--aggregated", is_flag=True, help="csv to stdout: the aggregated table instead of the tidy one.")
@click.option("--std", is_flag=True, help="latex/markdown: add ± std over runs to every value.")
@click.option("--sort", "sort_by", type=click.Choice(SORT_CHOICES), default="hm", show_default=True)
@click.option("--published", is_flag=True,
              help="Add the published reference rows and the gap to them (every format but the tidy csv).")
def export(results_dir, benchmarks, protocols, shots, methods, conventions, output_format, out_path, aggregated,
           std, sort_by, published):
    """Export stored results: tidy + aggregated CSV, LaTeX (booktabs), Markdown, JSON or a static HTML page."""
    from gfss_bench.results import exports

    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.published import published_rows

    if out_path:
        folder = Path(out_path).expanduser().parent
        if not folder.is_dir():
            raise GFSSError(f"--out {out_path}: the folder {folder} does not exist; create it first or write "
                            "elsewhere (export creates no folders)")
    results = load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    board = Leaderboard.build(results, sort_by, published_rows() if published else None)
    if output_format == "csv":
        if out_path:
            path = Path(out_path)
            aggregated_path = path.with_name(f"{path.stem}-aggregated{path.suffix or '.csv'}")
            _write("--out", path, exports.tidy_csv(results))
            _write("--out", aggregated_path, exports.aggregated_csv(board))
            common.err_console.print(f"wrote {path} (one row per method x fold x run) and {aggregated_path} (fold "
                                     "means)", markup=False, highlight=False)
            return
        text = exports.aggregated_csv(board) if aggregated else exports.tidy_csv(results)
    elif output_format == "latex":
        text = exports.latex(board, std=std)
    elif output_format == "markdown":
        text = exports.markdown(board, std=std)
    elif output_format == "json":
        text = exports.json_export(board, results)
    else:
        from gfss_bench.results.html import html_page
        folder = Path(out_path).expanduser().parent if out_path else None
        text = html_page(board, results=results, qualitative_dir=folder)
    if out_path:
        _write("--out", Path(out_path), text)
        common.err_console.print(f"wrote {out_path}", markup=False, highlight=False)
    else:
        click.echo(text, nl=False)


def _write(option: str, path: Path, text: str) -> None:
    """Write an output file atomically; an OSError is one line naming the option and the file."""
    from gfss_bench.paths import atomic_write_text

    try:
        atomic_write_text(path.expanduser(), text)
    except OSError as error:
        raise GFSSError(f"{option} {path} cannot be written ({error.strerror or error}); pick a writable path") \
            from None


@click.command()
@RESULT_FILTERS
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["bars", "shots", "tradeoff", "classes", "confusion", "all"]),
              default=("all",), show_default=True,
              help="bars: base/novel/HM per method; shots: novel mIoU vs. shots; tradeoff: base vs. novel with "
                   "iso-HM curves; classes: per-class IoU heat-map per fold; confusion: row-normalised confusion "
                   "matrices and where each novel class's pixels go, per fold (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="plots", show_default=True,
              help="Folder for the figures.")
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=200, show_default=True,
              help="Resolution of png figures.")
def plot(results_dir, benchmarks, protocols, shots, methods, conventions, kinds, fmt, out_dir, dpi):
    """Draw figures from stored results (one file per figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from gfss_bench.results.plots import KINDS, board_labels, make_figures, save_figures
    from gfss_bench.results.store import ResultStore
    from gfss_bench.results.tables import filter_results

    results = load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    selected = KINDS if "all" in kinds else tuple(kinds)
    every_label = board_labels(filter_results(ResultStore(Path(results_dir).expanduser()).load_all()[0]))
    try:
        paths = save_figures(make_figures(results, selected, every_label), out_dir, fmt, dpi)
    except OSError as error:
        raise GFSSError(f"--out {out_dir} cannot be written ({error.strerror or error}); pick a writable folder") \
            from None
    if not paths:
        common.err_console.print("no figures: no stored results match (or, for shots, only one shot count is stored)")
    for path in paths:
        common.console.print(str(path), highlight=False, markup=False)
