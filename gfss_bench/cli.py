"""The `gfss-bench` command line: a thin click layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gfss_bench.errors import GFSSError, resolve_option

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


def _load_plugins(ctx, param, modules) -> None:
    """--plugin callback: register the installed plugins (entry points) and import the named modules, before the
    command resolves any method, segmenter family or benchmark name."""
    from gfss_bench.plugins import load_plugins

    load_plugins(modules)


_PLUGINS = click.option("--plugin", "plugin_modules", multiple=True, metavar="MODULE", expose_value=False,
                        callback=_load_plugins,
                        help="Import this module first; it registers methods, segmenter families or benchmarks "
                             "(repeatable). Installed plugins (entry points) are loaded without it.")


def _options(*decorators):
    """Several click options as one decorator, for options that several commands share."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


_EPISODE_GRID = _options(
    click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all folds."),
    click.option("--shot", "-k", "shots", multiple=True, type=int, default=(1,), show_default=True,
                 help="Shots per novel class (repeatable)."),
    click.option("--runs", default=5, show_default=True, type=int, help="Runs (support sets) per fold."),
    click.option("--seed", default=2023, show_default=True, type=int, help="Base seed of the episodes."))
_SUPPORT_SETTINGS = _options(
    click.option("--queries", default=None, metavar="N|all",
                 help="Queries per run (default: the benchmark's; 10000 on COCO-20i, all val images on PASCAL)."),
    click.option("--support-source", type=click.Choice(["val", "train"]), default=None,
                 help="Split the supports are drawn from (default: val, as in DIaM)."),
    click.option("--min-support-pixels", type=int, default=None,
                 help="Least pixels of its novel class a support image needs (default: 16384 on the real "
                      "benchmarks)."),
    click.option("--single-novel-supports/--any-novel-supports", default=None,
                 help="Whether a support image may contain only its own novel class (default: only its own)."))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfss-bench")
def cli() -> None:
    """gfss-bench: reproducible generalized few-shot segmentation benchmarks."""


@cli.command()
@_PLUGINS
@click.option("--method", "-m", "methods", multiple=True, default=("diam",), show_default=True,
              help="Method to run (repeat for several); see `gfss-bench list`.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True,
              help="standard or practical (repeatable).")
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True,
              help="Benchmark name, or a benchmark YAML file (see README, \"A benchmark from a YAML file\").")
@_EPISODE_GRID
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
                   "(<dataset>/split<F>/.../*.pth). Default: the built-in segmenter (synthetic benchmarks). "
                   "The same as --segmenter pspnet:PATH.")
@click.option("--segmenter", "segmenter_ref", default=None, metavar="FAMILY:REF",
              help="Base segmenter from a segmenter family (`gfss-bench list`), e.g. builtin, pspnet:model_ckpt or "
                   "torchvision:deeplabv3_resnet50=weights.pth; REF is usually a file or a folder with fold<F>.pth.")
@click.option("--image-size", type=int, default=None,
              help="Evaluation input side, (S-1) % 8 == 0 (default: the benchmark's, 417 on the real ones).")
@_SUPPORT_SETTINGS
@click.option("--episodes", default="diam", show_default=True, metavar="diam|independent|FILE.json",
              help="Support sets: diam (the official sampler), independent (each run from its own seed), or a JSON "
                   "file of `gfss-bench episodes --format json`, whose support sets are used as they are.")
@click.option("--feature-precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True, help="Autocast dtype of the feature extraction (fp32 as the official code; fp16 or "
                                      "bf16 are faster on a GPU and change features slightly); the methods always "
                                      "run in fp32.")
@click.option("--feature-cache", type=click.Path(file_okay=False), default=None,
              help="Keep the features in float16 memory-mapped files in this folder and reuse them in later runs "
                   "(recorded in the run spec, as the fp16 rounding can change results slightly).")
@click.option("--feature-memory", type=float, default=None, metavar="GIB",
              help="Hold every image's features in RAM when they fit in this many GiB (default: a quarter of the "
                   "physical memory); otherwise stream them, once per run.")
@click.option("--workers", "loader_workers", type=int, default=None,
              help="DataLoader workers that decode and resize images (default: 4 on CUDA, 0 on CPU).")
def run(methods, protocols, benchmark, folds, shots, runs, seed, convention, device, batch_size, option_pairs,
        results_dir, force, data_root, skip_bad_images, checkpoint, segmenter_ref, image_size, queries, support_source,
        min_support_pixels, single_novel_supports, feature_precision, feature_cache, feature_memory, loader_workers,
        episodes):
    """Evaluate methods on seeded GFSS episodes and store the results.

    Under `torchrun --nproc-per-node N -m gfss_bench run ...` the query batches are shared out among the
    processes (one GPU each), the confusion matrices summed, and rank 0 writes the results.
    """
    from gfss_bench.evaluation import distributed
    from gfss_bench.evaluation.plan import plan
    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.report import print_leaderboard

    settings = {"method": methods, "protocol": protocols, "benchmark": benchmark, "fold": folds, "shot": shots,
                "runs": runs, "seed": seed, "convention": convention, "device": device, "batch_size": batch_size,
                "option": _parse_options(option_pairs, methods), "results_dir": results_dir, "force": force,
                "data_root": data_root, "skip_bad_images": skip_bad_images, "checkpoint": checkpoint,
                "segmenter": segmenter_ref, "image_size": image_size, "queries": queries,
                "support_source": support_source, "min_support_pixels": min_support_pixels,
                "single_novel_supports": single_novel_supports, "episodes": episodes,
                "feature_precision": feature_precision, "feature_cache": feature_cache,
                "feature_memory": feature_memory, "workers": loader_workers}
    planned = plan(settings)
    workers = distributed.from_environment(device)
    try:
        results = planned.execute(_log, workers)
    finally:
        distributed.shutdown(workers)
    if workers.is_main:
        print_leaderboard(Leaderboard.build(results), console)


def _log(message: str) -> None:
    err_console.print(message if message.startswith("warning") else f"[dim]{message}[/]", highlight=False,
                      soft_wrap=True)


@cli.command()
@_PLUGINS
@click.option("--benchmark", "-b", required=True,
              help="Benchmark name, or a benchmark YAML file (see README, \"A benchmark from a YAML file\").")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder of a real benchmark (holds val.txt); not needed for the synthetic ones.")
@_EPISODE_GRID
@click.option("--episodes", "sampler", type=click.Choice(["diam", "independent"]), default="diam", show_default=True,
              help="Support sampler: diam (the official one) or independent (each run from its own seed).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: what `run --episodes FILE.json` reads.")
@_SUPPORT_SETTINGS
@click.option("--skip-bad-images", is_flag=True, help="Leave out unreadable images/labels, as `run` does.")
def episodes(benchmark, data_root, folds, shots, runs, seed, sampler, output_format, queries, support_source,
             min_support_pixels, single_novel_supports, skip_bad_images):
    """Print each run's support images per novel class and its number of queries, without loading any model."""
    import json

    from gfss_bench.evaluation.plan import evaluation_overrides
    from gfss_bench.evaluation.runner import list_episodes
    from gfss_bench.protocols import resolve_benchmark

    bench = resolve_option("--benchmark", resolve_benchmark, benchmark)
    for fold in folds:
        bench.check_fold(fold)
    for value, option in ((min(shots), "--shot"), (runs, "--runs")):
        if value < 1:
            raise GFSSError(f"{option} must be >= 1, got {value}")
    settings = bench.evaluation_settings(**evaluation_overrides({
        "queries": queries, "support_source": support_source, "min_support_pixels": min_support_pixels,
        "single_novel_supports": single_novel_supports}))
    documents = list_episodes(bench, folds or range(bench.num_folds), dict.fromkeys(shots), runs, seed, sampler,
                              settings, Path(data_root) if data_root else None, skip_bad_images, _log)
    if output_format == "json":
        click.echo(json.dumps(documents, indent=2))
        return
    for document in documents:
        table = Table(title=f"{bench.name} fold {document['fold']} {document['shot']}-shot: {sampler} episodes, "
                            f"seed {seed}")
        for column in ("run", "class", "support images", "queries"):
            table.add_column(column)
        for run in document["runs"]:
            for number, (name, stems) in enumerate(run["supports"].items()):
                table.add_row(str(run["run"]) if number == 0 else "", name, " ".join(stems),
                              str(run["num_queries"]) if number == 0 else "")
        console.print(table)


@cli.command()
@_PLUGINS
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where result files are stored (default: the config's results_dir, else results).")
@click.option("--force", is_flag=True, help="Recompute even when a result with the same id is stored.")
@click.option("--dry-run", is_flag=True, help="Only list the specs of the grid and whether each is stored.")
def sweep(config, results_dir, force, dry_run):
    """Evaluate a grid from a YAML file; stored specs are skipped, so rerunning resumes an interrupted sweep."""
    from gfss_bench.evaluation.sweep import expand, load_config, results_dir_of, run_sweep
    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.report import print_leaderboard
    from gfss_bench.results.store import ResultStore

    settings = load_config(config)
    if dry_run:
        store = ResultStore(results_dir_of(settings, results_dir))
        for spec in expand(settings):
            state = "stored" if store.contains(spec.run_id) else (
                "partial" if store.partial_path_for(spec.run_id).exists() else "missing")
            options = ",".join(f"{k}={v}" for k, v in spec.method_options)
            click.echo(f"{spec.run_id} {state:8s} {spec.method}({options}) {spec.benchmark} {spec.protocol} "
                       f"fold {spec.fold} {spec.shot}-shot {spec.convention}")
        return
    results = run_sweep(settings, results_dir, force=force, log=_log)
    print_leaderboard(Leaderboard.build(results), console)


# --results-dir and the filters shared by report, export and plot.
_result_filters = _options(
    click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
                 help="Where result files are stored."),
    click.option("--benchmark", "-b", "benchmarks", multiple=True,
                 help="Only this benchmark: a name or a benchmark YAML file (repeatable)."),
    click.option("--protocol", "-p", "protocols", multiple=True, help="Only this protocol (repeatable)."),
    click.option("--shot", "-k", "shots", multiple=True, type=int, help="Only this shot count (repeatable)."),
    click.option("--method", "-m", "methods", multiple=True,
                 help="Only this method: a name (all its settings) or a full label such as "
                      "'diam(pi_strategy=uniform)' (repeatable)."),
    click.option("--convention", "conventions", multiple=True, help="Only this metric convention (repeatable)."))


def _load_results(results_dir, benchmarks, protocols, shots, methods, conventions) -> list[dict]:
    from gfss_bench.protocols.benchmark_files import is_benchmark_file, resolve_benchmark
    from gfss_bench.results.report import filter_results
    from gfss_bench.results.store import ResultStore

    benchmarks = tuple(resolve_option("--benchmark", resolve_benchmark, b).name if is_benchmark_file(b) else b
                       for b in benchmarks)
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
    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.exports import aggregated_csv
    from gfss_bench.results.published import published_rows

    board = Leaderboard.build(results, sort_by, published_rows() if published else None)
    if output_format == "csv":
        if per_class:
            click.echo(rep.per_class_frame(results).to_csv(index=False, float_format="%.2f"), nl=False)
        elif per_fold:
            click.echo(rep.fold_rows(results).to_csv(index=False, float_format="%.2f"), nl=False)
        else:
            click.echo(aggregated_csv(board), nl=False)
        return
    rep.print_leaderboard(board, console)
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
@click.option("--published", is_flag=True,
              help="Add the published reference rows and the gap to them (every format but the tidy csv).")
def export(results_dir, benchmarks, protocols, shots, methods, conventions, output_format, out_path, aggregated,
           std, sort_by, published):
    """Export stored results: tidy + aggregated CSV, LaTeX (booktabs), Markdown, JSON or a static HTML page."""
    from gfss_bench.paths import atomic_write_text
    from gfss_bench.results import exports

    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.published import published_rows

    results = _load_results(results_dir, benchmarks, protocols, shots, methods, conventions)
    board = Leaderboard.build(results, sort_by, published_rows() if published else None)
    if output_format == "csv":
        if out_path:
            path = Path(out_path)
            aggregated_path = path.with_name(f"{path.stem}-aggregated{path.suffix or '.csv'}")
            atomic_write_text(path, exports.tidy_csv(results))
            atomic_write_text(aggregated_path, exports.aggregated_csv(board))
            err_console.print(f"wrote {path} (one row per method x fold x run) and {aggregated_path} (fold means)")
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
        text = html_page(board)
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
@_PLUGINS
def list_command():
    """List methods, protocols, benchmarks and segmenter families, with where each came from (built-in or a plugin)."""
    from gfss_bench.methods import METHODS
    from gfss_bench.models.families import SEGMENTER_FAMILIES
    from gfss_bench.protocols import BENCHMARKS, PROTOCOLS

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("options (defaults)")
    table.add_column("from")
    for name, cls in METHODS.items():
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in cls().options().items()), METHODS.origin(name))
    console.print(table)
    table = Table(title="protocols")
    table.add_column("name")
    table.add_column("description")
    for name, protocol in PROTOCOLS.items():
        table.add_row(name, protocol.description)
    console.print(table)
    table = Table(title="benchmarks")
    for column in ("name", "folds", "novel classes per fold", "image size", "description", "from"):
        table.add_column(column)
    for name, bench in BENCHMARKS.items():
        table.add_row(name, str(bench.num_folds), str(len(bench.fold_novel_classes[0])), str(bench.image_size),
                      bench.description, BENCHMARKS.origin(name))
    console.print(table)
    table = Table(title="segmenter families (run --segmenter FAMILY:REF)")
    for column in ("name", "description", "from"):
        table.add_column(column)
    for name, family in SEGMENTER_FAMILIES.items():
        table.add_row(name, family.description, SEGMENTER_FAMILIES.origin(name))
    console.print(table)


@cli.command()
@_PLUGINS
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True,
              help="Benchmark name, or a benchmark YAML file.")
@click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True)
@click.option("--arch", type=click.Choice(["small", "pspnet-resnet50"]), default=None,
              help="small: the CPU-sized network of the synthetic benchmarks (their default; it works for any "
                   "benchmark); pspnet-resnet50: PSPNet-ResNet50 in DIaM's checkpoint layout (the default elsewhere).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder (holds train.txt and val.txt) [default: a benchmark YAML file's data_root].")
@click.option("--backbone-weights", metavar="FILE|none", default=None,
              help="pspnet-resnet50 (required): ImageNet ResNet-50 weights, torchvision's resnet50 .pth (7x7 stem) or "
                   "semseg/PFENet's resnet50_v2.pth (deep stem); `none`: random initialisation (smoke tests only).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", type=int, default=None,
              help="pspnet-resnet50: epochs [default: 50 PASCAL, 20 COCO and synthetic].")
@click.option("--steps", default=None, type=int,
              help="Optimisation steps (small: default the shipped recipe's; pspnet-resnet50: instead of --epochs).")
@click.option("--batch-size", type=int, default=None, help="pspnet-resnet50 [default: 12].")
@click.option("--lr", type=float, default=None,
              help="pspnet-resnet50: backbone lr; the head gets 10x; poly decay, power 0.9 [default: 0.0025].")
@click.option("--crop-size", type=int, default=None,
              help="pspnet-resnet50: training crop, (size-1) % 8 == 0 [default: the benchmark's image size: 417, "
                   "97 synthetic].")
@click.option("--rotate", type=float, default=None,
              help="pspnet-resnet50: maximum random rotation in degrees, 0 for none [default: 10].")
@click.option("--workers", type=int, default=None,
              help="pspnet-resnet50: DataLoader workers for decoding and augmentation [default: 6 (at most the CPU "
                   "count) on CUDA, 0 on CPU].")
@click.option("--save-every", type=int, default=None,
              help="pspnet-resnet50: steps between resume states [default: 1000]; Ctrl-C also saves one.")
@click.option("--amp/--no-amp", default=None, help="pspnet-resnet50: float16 autocast [default: on with CUDA].")
@click.option("--no-eval", is_flag=True, help="pspnet-resnet50: skip the val base mIoU at the end.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write <benchmark>-<protocol>/fold<F>.pt/.json (small; default: the cache) or "
                   "<benchmark>-<protocol>/fold<F>.pth/.json (pspnet-resnet50; default: checkpoints) here.")
@click.option("--force", is_flag=True,
              help="small: train even when the shipped weights have this config (with --out they are copied). "
                   "pspnet-resnet50: start over, discarding the resume state and a finished checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def train(benchmark, folds, protocols, arch, data_root, backbone_weights, seed, epochs, steps, batch_size, lr,
          crop_size, rotate, workers, save_every, amp, no_eval, out_dir, force, device):
    """Train a base segmenter on the base classes of a fold (cross-entropy), as the protocol prescribes.

    pspnet-resnet50 saves resume states: rerunning an interrupted command continues where it stopped.
    """
    import json
    import os

    from gfss_bench.evaluation.runner import resolve_device
    from gfss_bench.protocols import get_protocol, resolve_benchmark

    bench = resolve_option("--benchmark", resolve_benchmark, benchmark)
    benchmark = bench.name  # a YAML file is now registered under its name
    for protocol in protocols:
        resolve_option("--protocol", get_protocol, protocol)
    for fold in folds:
        bench.check_fold(fold)
    if steps is not None and steps < 1:
        raise GFSSError(f"--steps must be >= 1, got {steps}")
    arch = arch or ("small" if bench.generated else "pspnet-resnet50")
    device_name = resolve_device(device).type
    given_as = bench.source or benchmark  # how `run` is told the benchmark, in the hints printed below
    if arch == "small":
        from gfss_bench.models import zoo

        given = [name for name, value in (
            ("--backbone-weights", backbone_weights), ("--epochs", epochs),
            ("--batch-size", batch_size), ("--lr", lr), ("--crop-size", crop_size), ("--rotate", rotate),
            ("--workers", workers), ("--save-every", save_every), ("--amp/--no-amp", amp),
            ("--no-eval", no_eval or None)) if value is not None]
        if given:
            raise GFSSError(f"{', '.join(given)}: only for --arch pspnet-resnet50")
        for protocol in protocols:
            folder = Path(out_dir) / f"{benchmark}-{protocol}" if out_dir else None
            for fold in folds or range(bench.num_folds):
                out = folder / f"fold{fold}.pt" if folder else None
                copied = out is not None and seed == 0 and steps is None and not force and \
                    zoo.copy_shipped(benchmark, fold, protocol, out)
                path = copied or zoo.train_and_save(benchmark, fold, protocol, seed=seed, steps=steps,
                                                    device=device_name, out=out, command=" ".join(sys.argv),
                                                    data_root=Path(data_root) if data_root else None)
                manifest = json.loads(path.with_suffix(".json").read_text())
                how = "shipped weights of this config (--force retrains)" if copied else \
                    f"in {manifest['train_seconds']:.0f} s"
                console.print(f"{benchmark} fold {fold} {protocol}: base mIoU {100 * manifest['val_base_miou']:.1f}% "
                              f"{how} -> {path}")
            if folder:
                console.print(f"evaluate with: gfss-bench run --benchmark {given_as} --protocol {protocol} "
                              f"--checkpoint {folder}" + (f" --data-root {data_root}" if data_root else ""),
                              highlight=False)
        return
    from gfss_bench.models.pspnet_training import PSPNetTrainConfig, train_pspnet

    if backbone_weights is None:
        raise GFSSError("--arch pspnet-resnet50 starts from ImageNet weights: pass --backbone-weights FILE "
                        "(torchvision's resnet50 .pth or semseg/PFENet's resnet50_v2.pth), or --backbone-weights none "
                        "for a random initialisation (smoke tests only)")
    settings = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "crop_size": crop_size,
                "rotate": rotate}
    config = PSPNetTrainConfig(seed=seed, **{k: v for k, v in settings.items() if v is not None})
    if workers is None:
        workers = min(6, os.cpu_count() or 1) if device_name == "cuda" else 0
    out = Path(out_dir or "checkpoints")
    for protocol in protocols:
        for fold in folds or range(bench.num_folds):
            _, info = train_pspnet(
                benchmark, fold, protocol, config=config, out=out, device=device_name, workers=workers, amp=amp,
                backbone_weights=None if backbone_weights.lower() == "none" else Path(backbone_weights),
                data_root=Path(data_root) if data_root else None, evaluate=not no_eval, force=force,
                command=" ".join(sys.argv), **({} if save_every is None else {"save_every": save_every}))
            miou = f"base mIoU {100 * info['val_base_miou']:.1f}%" if "val_base_miou" in info else "trained"
            console.print(f"{benchmark} fold {fold} {protocol}: {miou}"
                          f"{' (already trained)' if info.get('already_trained') else ''} -> {info['path']}")
        console.print(f"evaluate with: gfss-bench run --benchmark {given_as} --protocol {protocol} --checkpoint "
                      f"{out / f'{benchmark}-{protocol}'}" + (f" --data-root {data_root}" if data_root else ""),
                      highlight=False)


@cli.group()
def data() -> None:
    """Prepare and check the real datasets (PASCAL VOC 2012 + SBD, COCO 2014) that --data-root points to."""


@data.group()
def prepare() -> None:
    """Write train.txt/val.txt (and COCO's label PNGs) into a dataset folder; see README "Datasets"."""


_ROOT = click.option("--root", required=True, type=click.Path(file_okay=False),
                     help="Dataset folder; becomes the --data-root of `gfss-bench run`.")
_WORKERS = click.option("--workers", default=None, type=click.IntRange(min=1),
                        help="Parallel processes [default: min(8, CPU count)].")


@prepare.command(name="pascal")
@_ROOT
@click.option("--train-list", type=click.Path(dir_okay=False), default=None,
              help="Use this list file (e.g. PFENet's/DIaM's lists/pascal/train.txt) verbatim as train.txt.")
@click.option("--val-list", type=click.Path(dir_okay=False), default=None,
              help="Use this list file verbatim as val.txt.")
def prepare_pascal_command(root, train_list, val_list):
    """PASCAL VOC 2012 (+ SBD): --root is VOCdevkit/VOC2012 with JPEGImages/ and SegmentationClassAug/."""
    from gfss_bench.benchmark.prepare import prepare_pascal

    summary = prepare_pascal(root, train_list, val_list)
    for note in summary.notes:
        err_console.print(f"warning: {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {Path(root) / 'train.txt'} ({summary.train_images} images, {summary.train_source}) and "
                  f"{Path(root) / 'val.txt'} ({summary.val_images} images); check them with "
                  f"`gfss-bench data verify pascal5i --root {root}`", highlight=False, soft_wrap=True)


@prepare.command(name="coco")
@_ROOT
@_WORKERS
def prepare_coco_command(root, workers):
    """COCO 2014: --root holds train2014/, val2014/ and annotations/instances_{train,val}2014.json."""
    from gfss_bench.benchmark.prepare import prepare_coco

    summaries = prepare_coco(root, workers=workers, log=_log)
    for split, summary in summaries.items():
        console.print(f"{split}: {summary.images} images, {summary.built} labels built, {summary.kept} kept "
                      "from an earlier run", highlight=False, soft_wrap=True)
    console.print(f"wrote {Path(root) / 'train.txt'} and {Path(root) / 'val.txt'}; check them with "
                  f"`gfss-bench data verify coco20i --root {root}`", highlight=False, soft_wrap=True)


@data.command()
@_PLUGINS
@click.argument("benchmark")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder [default: the data_root of a benchmark YAML file].")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val"]), default=("train", "val"),
              show_default=True, help="Split to check (repeatable).")
@_WORKERS
@click.option("--show", "shown", default=20, show_default=True, type=click.IntRange(min=0),
              help="Problems listed (all are counted; --json lists all).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout instead of tables.")
def verify(benchmark, root, splits, workers, shown, as_json):
    """Check every listed image and label of a benchmark's dataset; exit code 1 when anything is wrong."""
    import json

    from gfss_bench.benchmark.verify import verify_dataset
    from gfss_bench.protocols import resolve_benchmark

    bench = resolve_option("BENCHMARK", resolve_benchmark, benchmark)
    root = root or bench.data_root
    if root is None:
        raise GFSSError(f"--root: benchmark {bench.name!r} has no data_root; pass the folder that holds train.txt "
                        "and val.txt")
    result = verify_dataset(bench, root, tuple(dict.fromkeys(splits)), workers)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        table = Table(title=f"{bench.name}: images holding each class")
        table.add_column("id", justify="right")
        table.add_column("class")
        for split, counts in result.splits.items():
            table.add_column(f"{split} ({counts.images} images)", justify="right")
        for class_id, name in enumerate(bench.class_names, start=1):
            table.add_row(str(class_id), name, *(str(counts.class_images[class_id - 1])
                                                 for counts in result.splits.values()))
        console.print(table)
        for problem in result.problems[:shown]:
            console.print(str(problem), highlight=False, soft_wrap=True)
    if result.ok:
        err_console.print(f"OK: {', '.join(f'{s} {c.images} images' for s, c in result.splits.items())}, "
                          "no problems", highlight=False, soft_wrap=True)
        return
    err_console.print(f"{len(result.problems)} problem(s) found"
                      f"{f'; the first {shown} are listed above' if 0 < shown < len(result.problems) else ''}",
                      highlight=False, soft_wrap=True)
    sys.exit(1)


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
