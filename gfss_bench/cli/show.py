"""`show`: a qualitative figure of chosen queries of stored results, their predictions recomputed from the specs."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from gfss_bench.cli import common
from gfss_bench.errors import GFSSError

DEFAULT_COUNT = 4  # queries shown by --compare without --best/--worst


@click.command()
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Where result files are stored.")
@click.option("--benchmark", "-b", "benchmarks", multiple=True, help="Only this benchmark (repeatable).")
@click.option("--protocol", "-p", "protocols", multiple=True, help="Only this protocol.")
@click.option("--shot", "-k", "shots", multiple=True, type=int, help="Only this shot count.")
@click.option("--method", "-m", "methods", multiple=True, required=True,
              help="A method (name or full label) whose prediction gets a column (repeatable); base adds the base "
                   "segmenter's, also when no base result is stored.")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--run", "run", type=int, default=0, show_default=True, help="The run (support set) to show.")
@click.option("--query", "query_names", multiple=True, metavar="STEM", help="A query image by name (repeatable).")
@click.option("--worst", type=click.IntRange(min=1), default=None, metavar="N",
              help="The N queries of lowest mIoU, averaged over the chosen methods other than base.")
@click.option("--best", type=click.IntRange(min=1), default=None, metavar="N", help="The N queries of highest mIoU.")
@click.option("--compare", nargs=2, metavar="A B", default=None,
              help=f"The queries where A beats B most (with --worst N: least; {DEFAULT_COUNT} unless N is given).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="show.png", show_default=True,
              help="The figure file: .png, .pdf or .svg.")
@click.option("--width-in", type=click.FloatRange(min=2.0, max=30.0), default=7.0, show_default=True,
              help="Figure width in inches (7 fits a two-column paper's full width).")
@click.option("--no-header", is_flag=True, help="Leave out the support set row (a compact figure).")
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=200, show_default=True,
              help="Resolution of a png figure.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where the benchmark's data lives (as given to `run`).")
@click.option("--segmenter", "segmenter_ref", default=None, metavar="FAMILY:REF",
              help="The base segmenter's weights, as given to `run` (the built-in ones need nothing).")
@click.option("--checkpoint", default=None, help="A PSPNet checkpoint (folder), as given to `run`.")
def show(results_dir, benchmarks, protocols, shots, methods, fold, run, query_names, worst, best, compare, out_path,
         width_in, no_header, dpi, data_root, segmenter_ref, checkpoint):
    """Draw chosen queries: image, ground truth and each method's prediction, under the support set."""
    import matplotlib

    matplotlib.use("Agg")
    from gfss_bench.cli.common import load_results
    from gfss_bench.evaluation.predict import recompute, segmenter_loader_for
    from gfss_bench.results.qualitative import figure
    from gfss_bench.results.store import ResultStore

    suffix = Path(out_path).suffix.lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise GFSSError(f"--out {out_path[:200]}: name a .png, .pdf or .svg file")
    if sum(bool(x) for x in (query_names, worst or best or compare)) != 1 or (worst and best):
        raise GFSSError("choose the queries one way: --query STEM (repeatable), --worst N, --best N or --compare A B")
    results = [r for r in load_results(results_dir, benchmarks, protocols, shots, methods, ())
               if r["spec"]["fold"] == fold]
    base_column = "base" in methods and not any(r["spec"]["method"] == "base" for r in results)
    methods = tuple(m for m in methods if not (base_column and m == "base"))  # computed without a stored result
    if not methods:
        raise GFSSError("-m: name at least one method with stored results besides base")
    results = _one_per_method(results, methods)
    store = ResultStore(Path(results_dir).expanduser())
    records = {r["run_id"]: _run_records(store, r, run) for r in results}
    if not query_names:
        query_names = _chosen_queries(results, records, worst, best, compare)
    loader = segmenter_loader_for(results[0], segmenter_ref, checkpoint)
    shown = recompute(results, run, list(dict.fromkeys(query_names)), records,
                      Path(data_root).expanduser() if data_root else None, common.log, loader, base_column)
    drawn = figure(shown, width_in, header=not no_header)
    try:
        drawn.savefig(Path(out_path).expanduser(), dpi=dpi, metadata={"Software": "gfss-bench"} if suffix == ".png"
                      else None)
    except OSError as error:
        raise GFSSError(f"--out {out_path} cannot be written ({error.strerror or error}); pick a writable path") \
            from None
    common.console.print(str(out_path), highlight=False, markup=False)


def _one_per_method(results: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """One stored result per -m, in the given order; a clear error for none or several."""
    from gfss_bench.results.describe import result_label

    chosen = []
    for name in methods:
        exact = [r for r in results if result_label(r) == name] or [r for r in results if r["spec"]["method"] == name]
        if not exact:
            raise GFSSError(f"-m {name[:100]!r}: no stored result of it matches the filters and --fold")
        settings = {(result_label(r), r["spec"]["benchmark"], r["spec"]["protocol"], r["spec"]["shot"])
                    for r in exact}
        if len(settings) > 1:
            raise GFSSError(f"-m {name[:100]!r} matches several stored results ({len(settings)}); narrow them with "
                            "-b, -p, -k or the full method label")
        chosen.append(exact[0])
    return chosen


def _run_records(store, result: dict, run: int):
    """The stored per-query records of `run`, or None."""
    try:
        stored = store.load_query_records(result) or []
    except ValueError as error:
        raise GFSSError(f"the per-query records of {store.path_for(result['run_id'])} cannot be used: {error}") \
            from None
    return next((r for r in stored if r["run"] == run), None)


def _chosen_queries(results, records, worst, best, compare) -> list[str]:
    """--worst/--best N (mean per-query mIoU over the chosen non-base methods) or --compare A B."""
    from gfss_bench.results.describe import result_label

    scores = {}
    for result in results:
        kept = records[result["run_id"]]
        if kept is None:
            raise GFSSError(f"{result_label(result)} was stored without per-query records: name the queries with "
                            "--query STEM, or rerun it with --force")
        scores[result_label(result)] = {q["query"]: float(np.mean(np.array(q["intersection"]) / np.array(q["union"])))
                                        for q in kept["queries"]}
    if compare:
        a, b = (_label(scores, name) for name in compare)
        value = {q: scores[a][q] - scores[b][q] for q in scores[a] if q in scores[b]}
        best = best or (None if worst else DEFAULT_COUNT)
    else:
        methods = [m for m in scores if m != "base"] or list(scores)
        value = {q: float(np.mean([scores[m][q] for m in methods])) for q in scores[methods[0]]
                 if all(q in scores[m] for m in methods)}
    ordered = sorted(value, key=lambda q: (value[q], q), reverse=bool(best))
    return ordered[:best or worst]


def _label(scores: dict, name: str) -> str:
    if name in scores:
        return name
    matches = [label for label in scores if label.split("(")[0] == name]
    if len(matches) != 1:
        raise GFSSError(f"--compare {name[:100]!r} must be one of the -m methods ({', '.join(scores)})")
    return matches[0]

