"""What the command groups share: the consoles, the one-line log, and option groups used by several commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.console import Console

from gfss_bench.errors import GFSSError, resolve_option

console = Console()
err_console = Console(stderr=True)


def log(message: str) -> None:
    """Progress and warnings on stderr (warnings in full colour)."""
    err_console.print(message, style=None if message.startswith("warning") else "dim", highlight=False,
                      markup=False, soft_wrap=True)


def parse_method_options(pairs: tuple[str, ...], methods: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`-o key=value` applies to every selected method that has the option; `-o method.key=value` to one."""
    from gfss_bench.methods import METHODS, check_option_name

    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    for pair in pairs:
        if "=" not in pair:
            raise GFSSError(f"--option {pair[:200]!r} must look like KEY=VALUE or METHOD.KEY=VALUE")
        key, value = pair.split("=", 1)
        target, _, name = key.rpartition(".")
        targets = [target] if target else list(methods)
        if target and target not in per_method:
            raise GFSSError(f"--option {pair[:200]!r} names method {target[:100]!r}, which is not among --method "
                            f"{', '.join(methods)}")
        matched = [m for m in targets if name in {f.name for f in dataclasses.fields(METHODS.get(m))}]
        if not matched:
            check_option_name(targets[0], name)  # raises the "unknown option" message
        for m in matched:
            per_method[m][name] = value
    return per_method


def _load_plugins(ctx, param, modules) -> None:
    """--plugin callback: register the installed plugins (entry points) and import the named modules, before the
    command resolves any method, segmenter family or benchmark name."""
    from gfss_bench.plugins import load_plugins

    load_plugins(modules)


PLUGINS = click.option("--plugin", "plugin_modules", multiple=True, metavar="MODULE", expose_value=False,
                        callback=_load_plugins,
                        help="Import this module first; it registers methods, segmenter families or benchmarks "
                             "(repeatable). Installed plugins (entry points) are loaded without it.")


def option_group(*decorators):
    """Several click options as one decorator, for options that several commands share."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


EPISODE_GRID = option_group(
    click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all folds."),
    click.option("--shot", "-k", "shots", multiple=True, type=int, default=(1,), show_default=True,
                 help="Shots per novel class (repeatable)."),
    click.option("--runs", default=5, show_default=True, type=int, help="Runs (support sets) per fold."),
    click.option("--seed", default=2023, show_default=True, type=int, help="Base seed of the episodes."))
SUPPORT_SETTINGS = option_group(
    click.option("--queries", default=None, metavar="N|all",
                 help="Queries per run, the official test_num (default: the benchmark's; 10000 on COCO-20i, all "
                      "val images on PASCAL). With --episodes diam a cap takes N // B batches of the official "
                      "validation batch B (50 on COCO, 200 on PASCAL) from one shuffled stream, as the official "
                      "code does."),
    click.option("--support-source", type=click.Choice(["val", "train"]), default=None,
                 help="Split the supports are drawn from (default: val, as in DIaM)."),
    click.option("--min-support-pixels", type=int, default=None,
                 help="Least pixels of its novel class a support image needs (default: 16384 on the real "
                      "benchmarks)."),
    click.option("--single-novel-supports/--any-novel-supports", default=None,
                 help="Whether a support image may contain only its own novel class (default: only its own)."))


RESULT_FILTERS = option_group(
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


def load_results(results_dir, benchmarks, protocols, shots, methods, conventions) -> list[dict]:
    from gfss_bench.protocols.benchmark_files import is_benchmark_file, resolve_benchmark
    from gfss_bench.results.tables import filter_results
    from gfss_bench.results.store import ResultStore

    benchmarks = tuple(resolve_option("--benchmark", resolve_benchmark, b).name if is_benchmark_file(b) else b
                       for b in benchmarks)
    folder = Path(results_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise GFSSError(f"--results-dir {folder} {what}; pass the folder `gfss-bench run` or `sweep` stored results in "
                        "(nothing stored yet? run `gfss-bench run` first)")
    results, problems = ResultStore(folder).load_all()
    for problem in problems:  # damaged files never stop a report: each is named with its reason
        err_console.print(f"skipped {problem.path}: {problem.reason}", style="red", highlight=False, markup=False,
                          soft_wrap=True)
    partial = [r for r in results if r.get("skipped_images")]
    if partial:
        err_console.print(f"note: {len(partial)} result(s) were computed with --skip-bad-images and left out "
                          f"{sum(len(r['skipped_images']) for r in partial)} image(s) in total; see "
                          "skipped_images in their files")
    return filter_results(results, benchmarks, protocols, shots, methods, conventions)
