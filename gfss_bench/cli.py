"""The `gfss-bench` command line: a thin click layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gfss_bench.errors import GFSSError

console = Console()
err_console = Console(stderr=True)


def _parse_options(pairs: tuple[str, ...], methods: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`-o key=value` applies to every selected method that has the option; `-o method.key=value` to one."""
    from gfss_bench.methods import METHODS
    import dataclasses

    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    for pair in pairs:
        if "=" not in pair:
            raise GFSSError(f"--option {pair!r} must look like KEY=VALUE or METHOD.KEY=VALUE")
        key, value = pair.split("=", 1)
        target, _, name = key.rpartition(".")
        targets = [target] if target else list(methods)
        if target and target not in per_method:
            raise GFSSError(f"--option {pair!r} names method {target!r}, which is not among --method "
                            f"{', '.join(methods)}")
        matched = [m for m in targets if name in {f.name for f in dataclasses.fields(METHODS.get(m))}]
        if not matched:
            from gfss_bench.methods import build_method
            build_method(targets[0], **{name: value})  # raises the "unknown option" message
        for m in matched:
            per_method[m][name] = value
    return per_method


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfss-bench")
def cli() -> None:
    """gfss-bench: reproducible generalized few-shot segmentation benchmarks."""


@cli.command()
@click.option("--method", "-m", "methods", multiple=True, default=("diam",), show_default=True,
              help="Method to run (repeat for several); see `gfss-bench list`.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True,
              help="standard or practical (repeatable).")
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True, help="Benchmark name.")
@click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all folds.")
@click.option("--shot", "-k", "shots", multiple=True, type=int, default=(1,), show_default=True,
              help="Shots per novel class (repeatable).")
@click.option("--runs", default=5, show_default=True, type=int, help="Runs (support sets) per fold.")
@click.option("--seed", default=2023, show_default=True, type=int, help="Base seed of the episodes.")
@click.option("--convention", default="diam", show_default=True, help="Metric convention: diam or pop.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--batch-size", default=None, type=int,
              help="Queries adapted together (default: 256 on the synthetic benchmarks, 16 on real ones).")
@click.option("--option", "-o", "option_pairs", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="Method option, e.g. -o iterations=50 or -o diam.pi_strategy=uniform.")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Where result files are stored.")
@click.option("--force", is_flag=True, help="Recompute even when a result with the same id is stored.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder of a real benchmark (holds val.txt); not needed for the synthetic ones.")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out unreadable images/labels and image/label size mismatches (with a warning); "
                   "the result lists them under skipped_images.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Base segmenter checkpoint (DIaM/BAM PSPNet-ResNet50, or a `gfss-bench train` file): one file "
                   "used for every selected fold, or a folder holding fold<F>.pth or DIaM's model_ckpt layout "
                   "(<dataset>/split<F>/.../*.pth). Default: the built-in segmenter (synthetic benchmarks).")
def run(methods, protocols, benchmark, folds, shots, runs, seed, convention, device, batch_size, option_pairs,
        results_dir, force, data_root, skip_bad_images, checkpoint):
    """Evaluate methods on seeded GFSS episodes and store the results."""
    from gfss_bench.benchmark.runner import RunSpec, execute, resolve_device
    from gfss_bench.protocols import get_benchmark
    from gfss_bench.results.report import leaderboard, print_leaderboard
    from gfss_bench.results.store import ResultStore

    from gfss_bench.methods import METHODS
    from gfss_bench.protocols import get_protocol

    bench = _choice("--benchmark", get_benchmark, benchmark)
    for method in methods:
        _choice("--method", METHODS.get, method)
    for protocol in protocols:
        _choice("--protocol", get_protocol, protocol)
    batch_size = bench.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise GFSSError(f"--batch-size must be >= 1, got {batch_size}")
    device_name = resolve_device(device).type
    options = _parse_options(option_pairs, methods)
    for fold in folds:
        bench.check_fold(fold)
    segmenters, loader_kwargs = {}, {}
    if checkpoint is not None:
        from gfss_bench.models.checkpoints import CheckpointSegmenterLoader, find_fold_checkpoint

        loader = CheckpointSegmenterLoader()
        for fold in folds or range(bench.num_folds):
            segmenters[fold] = loader.register(find_fold_checkpoint(checkpoint, fold, bench.dataset))
        loader_kwargs["segmenter_loader"] = loader
    specs = []
    for method in methods:
        for protocol in protocols:
            for fold in folds or range(bench.num_folds):
                for shot in shots:
                    extra = {"segmenter": segmenters[fold]} if fold in segmenters else {}
                    specs.append(RunSpec.create(method, benchmark, fold, protocol, shot, options[method],
                                                runs=runs, seed=seed, convention=convention, device=device_name,
                                                **extra))
    results = execute(specs, ResultStore(results_dir), **loader_kwargs, batch_size=batch_size, force=force,
                      data_root=Path(data_root) if data_root else None, skip_bad_images=skip_bad_images,
                      log=_log)
    print_leaderboard(leaderboard(results), console)


def _log(message: str) -> None:
    err_console.print(message if message.startswith("warning") else f"[dim]{message}[/]", highlight=False,
                      soft_wrap=True)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where result files are stored (default: the config's results_dir, else results).")
@click.option("--force", is_flag=True, help="Recompute even when a result with the same id is stored.")
@click.option("--dry-run", is_flag=True, help="Only list the specs of the grid and whether each is stored.")
def sweep(config, results_dir, force, dry_run):
    """Evaluate a grid from a YAML file; stored specs are skipped, so rerunning resumes an interrupted sweep."""
    from gfss_bench.benchmark.sweep import expand, load_config, run_sweep
    from gfss_bench.results.report import leaderboard, print_leaderboard
    from gfss_bench.results.store import ResultStore

    settings = load_config(config)
    if dry_run:
        store = ResultStore(results_dir or settings.get("results_dir", "results"))
        for spec in expand(settings):
            state = "stored" if store.contains(spec.run_id) else (
                "partial" if store.partial_path_for(spec.run_id).exists() else "missing")
            options = ",".join(f"{k}={v}" for k, v in spec.method_options)
            click.echo(f"{spec.run_id} {state:8s} {spec.method}({options}) {spec.benchmark} {spec.protocol} "
                       f"fold {spec.fold} {spec.shot}-shot {spec.convention}")
        return
    results = run_sweep(settings, results_dir, force=force, log=_log)
    print_leaderboard(leaderboard(results), console)


def _choice(option: str, resolve, value):
    """Resolve a registry name; prefix errors with the option that carried it."""
    try:
        return resolve(value)
    except GFSSError as error:
        message = str(error)
        raise GFSSError(message if message.startswith("--") else f"{option}: {message}") from None


def _result_filters(command):
    """--results-dir and the filters shared by report, export and plot."""
    for decorator in reversed([
        click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
                     help="Where result files are stored."),
        click.option("--benchmark", "-b", "benchmarks", multiple=True, help="Only this benchmark (repeatable)."),
        click.option("--protocol", "-p", "protocols", multiple=True, help="Only this protocol (repeatable)."),
        click.option("--shot", "-k", "shots", multiple=True, type=int, help="Only this shot count (repeatable)."),
        click.option("--method", "-m", "methods", multiple=True,
                     help="Only this method: a name (all its settings) or a full label such as "
                          "'diam(pi_strategy=uniform)' (repeatable)."),
        click.option("--convention", "conventions", multiple=True, help="Only this metric convention (repeatable)."),
    ]):
        command = decorator(command)
    return command


def _load_results(results_dir, benchmarks, protocols, shots, methods, conventions) -> list[dict]:
    from gfss_bench.results.report import filter_results
    from gfss_bench.results.store import ResultStore

    results, problems = ResultStore(results_dir).load_all()
    for problem in problems:
        err_console.print(f"[red]skipped {problem.path}: {problem.reason}[/]")
    partial = [r for r in results if r.get("skipped_images")]
    if partial:
        err_console.print(f"note: {len(partial)} result(s) were computed with --skip-bad-images and left out "
                          f"{sum(len(r['skipped_images']) for r in partial)} image(s) in total; see "
                          "skipped_images in their files")
    return filter_results(results, benchmarks, protocols, shots, methods, conventions)


SORT_CHOICES = ["hm", "base", "novel", "mean", "total", "method"]


@cli.command()
@_result_filters
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--sort", "sort_by", type=click.Choice(SORT_CHOICES), default="hm", show_default=True,
              help="Order rows by this metric (best first) or by method name.")
@click.option("--per-fold", is_flag=True, help="Also show the fold breakdown (mean ± std over each fold's runs).")
@click.option("--per-class", is_flag=True, help="Also show per-class IoU per fold, from the stored confusion matrices.")
@click.option("--published", is_flag=True,
              help="Add the published results (same benchmark, protocol, convention, shot) and the gap to them.")
@click.option("--compare", nargs=2, metavar="A B", default=None,
              help="Paired per-run differences A - B with a 95% t-interval, instead of the leaderboard.")
def report(results_dir, benchmarks, protocols, shots, methods, conventions, output_format, sort_by, per_fold,
           per_class, published, compare):
    """Show stored results as a leaderboard (fold means per method, ± std over runs)."""
    from gfss_bench.results import report as rep

    results = _load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    if compare:
        from gfss_bench.results.compare import paired_differences, print_comparison, summarize

        a, b = compare
        pairs, mismatched = paired_differences(results, a, b)
        summary = summarize(pairs)
        if output_format == "csv":
            click.echo(summary.to_csv(index=False, float_format="%.4f"), nl=False)
        else:
            print_comparison(pairs, summary, a, b, mismatched, console)
        return
    board = rep.sort_board(rep.leaderboard(results), sort_by)
    if output_format == "csv":
        if per_class:
            click.echo(rep.per_class_frame(results).to_csv(index=False, float_format="%.2f"), nl=False)
        elif per_fold:
            click.echo(rep.fold_rows(results).to_csv(index=False, float_format="%.2f"), nl=False)
        else:
            if published:
                from gfss_bench.results.published import published_rows
                refs = published_rows().assign(published=True)
                board = board.assign(published=False)
                keys = set(map(tuple, board[rep.GROUP_COLUMNS].astype(str).values))
                refs = refs[[tuple(map(str, k)) in keys for k in refs[rep.GROUP_COLUMNS].values]]
                board = rep.pd.concat([board, refs.rename(columns={"label": "paper"})], ignore_index=True)
            click.echo(rep.to_csv(board), nl=False)
        return
    refs = None
    if published:
        from gfss_bench.results.published import published_rows
        refs = published_rows()
    rep.print_leaderboard(board, console, sort=sort_by, published=refs)
    if per_fold:
        rep.print_per_fold(rep.fold_rows(results), console)
    if per_class:
        rep.print_per_class(rep.per_class_frame(results), console)


@cli.command()
@_result_filters
@click.option("--format", "output_format", type=click.Choice(["csv", "latex", "markdown", "json", "html"]),
              default="csv", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of stdout. For csv, the tidy file goes to PATH and the aggregated one "
                   "to PATH with '-aggregated' added before the suffix.")
@click.option("--aggregated", is_flag=True, help="csv to stdout: the aggregated table instead of the tidy one.")
@click.option("--std", is_flag=True, help="latex/markdown: add ± std over runs to every value.")
@click.option("--sort", "sort_by", type=click.Choice(SORT_CHOICES), default="hm", show_default=True)
@click.option("--published", is_flag=True, help="latex/markdown/html: add the published reference rows.")
def export(results_dir, benchmarks, protocols, shots, methods, conventions, output_format, out_path, aggregated,
           std, sort_by, published):
    """Export stored results: tidy + aggregated CSV, LaTeX (booktabs), Markdown, JSON or a static HTML page."""
    from gfss_bench.paths import atomic_write_text
    from gfss_bench.results import exports

    results = _load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    refs = None
    if published:
        from gfss_bench.results.published import published_rows
        refs = published_rows()
    if output_format == "csv":
        if out_path:
            path = Path(out_path)
            aggregated_path = path.with_name(f"{path.stem}-aggregated{path.suffix or '.csv'}")
            atomic_write_text(path, exports.tidy_csv(results))
            atomic_write_text(aggregated_path, exports.aggregated_csv(results, sort_by))
            err_console.print(f"wrote {path} (one row per method x fold x run) and {aggregated_path} (fold means)")
            return
        text = exports.aggregated_csv(results, sort_by) if aggregated else exports.tidy_csv(results)
    elif output_format == "latex":
        text = exports.latex(results, std=std, sort=sort_by, published=refs)
    elif output_format == "markdown":
        text = exports.markdown(results, std=std, sort=sort_by, published=refs)
    elif output_format == "json":
        text = exports.json_export(results, sort=sort_by)
    else:
        from gfss_bench.results.html import html_page
        text = html_page(results, sort=sort_by, published=refs)
    if out_path:
        atomic_write_text(Path(out_path), text)
        err_console.print(f"wrote {out_path}")
    else:
        click.echo(text, nl=False)


@cli.command()
@_result_filters
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["bars", "shots", "tradeoff", "classes", "all"]),
              default=("all",), show_default=True,
              help="bars: base/novel/HM per method; shots: novel mIoU vs. shots; tradeoff: base vs. novel with "
                   "iso-HM curves; classes: per-class IoU heat-map per fold (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="plots", show_default=True,
              help="Folder for the figures.")
def plot(results_dir, benchmarks, protocols, shots, methods, conventions, kinds, fmt, out_dir):
    """Draw figures from stored results (one file per figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from gfss_bench.results.plots import KINDS, make_figures, save_figures

    results = _load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    selected = KINDS if "all" in kinds else tuple(kinds)
    paths = save_figures(make_figures(results, selected), out_dir, fmt)
    if not paths:
        err_console.print("no figures: no stored results match (or, for shots, only one shot count is stored)")
    for path in paths:
        console.print(str(path), highlight=False)


@cli.command(name="list")
def list_command():
    """List methods, protocols and benchmarks."""
    from gfss_bench.methods import METHODS
    from gfss_bench.protocols import BENCHMARKS, PROTOCOLS

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("options (defaults)")
    for name, cls in METHODS.items():
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in cls().options().items()))
    console.print(table)
    table = Table(title="protocols")
    table.add_column("name")
    table.add_column("description")
    for name, protocol in PROTOCOLS.items():
        table.add_row(name, protocol.description)
    console.print(table)
    table = Table(title="benchmarks")
    for column in ("name", "folds", "novel classes per fold", "image size", "description"):
        table.add_column(column)
    for name, bench in BENCHMARKS.items():
        table.add_row(name, str(bench.num_folds), str(len(bench.fold_novel_classes[0])), str(bench.image_size),
                      bench.description)
    console.print(table)


@cli.command()
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True)
@click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--steps", default=None, type=int, help="Optimisation steps (default: the shipped recipe's).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write <benchmark>-fold<F>-<protocol>.pt/.json here (default: the cache).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def train(benchmark, folds, protocols, seed, steps, out_dir, device):
    """Train a base segmenter on the base classes of a fold (cross-entropy), as the protocol prescribes."""
    import json

    from gfss_bench.benchmark.runner import resolve_device
    from gfss_bench.models.zoo import train_and_save
    from gfss_bench.protocols import get_benchmark, get_protocol

    bench = _choice("--benchmark", get_benchmark, benchmark)
    if bench.dataset != "synthetic":
        raise GFSSError(f"--benchmark {benchmark}: training on real data is not available yet; "
                        "use synthetic5i or synthetic10i")
    for protocol in protocols:
        _choice("--protocol", get_protocol, protocol)
    for fold in folds:
        bench.check_fold(fold)
    if steps is not None and steps < 1:
        raise GFSSError(f"--steps must be >= 1, got {steps}")
    device_name = resolve_device(device).type
    for protocol in protocols:
        for fold in folds or range(bench.num_folds):
            path = train_and_save(benchmark, fold, protocol, seed=seed, steps=steps, device=device_name,
                                  out_dir=Path(out_dir) if out_dir else None, command=" ".join(sys.argv))
            manifest = json.loads(path.with_suffix(".json").read_text())
            console.print(f"{benchmark} fold {fold} {protocol}: base mIoU {100 * manifest['val_base_miou']:.1f}% "
                          f"in {manifest['train_seconds']:.0f} s -> {path}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except GFSSError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: results already stored are kept; rerun the same command to resume")
        sys.exit(130)
