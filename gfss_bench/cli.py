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
def run(methods, protocols, benchmark, folds, shots, runs, seed, convention, device, batch_size, option_pairs,
        results_dir, force, data_root):
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
    specs = []
    for method in methods:
        for protocol in protocols:
            for fold in folds or range(bench.num_folds):
                for shot in shots:
                    specs.append(RunSpec.create(method, benchmark, fold, protocol, shot, options[method],
                                                runs=runs, seed=seed, convention=convention, device=device_name))
    results = execute(specs, ResultStore(results_dir), batch_size=batch_size, force=force,
                      data_root=Path(data_root) if data_root else None,
                      log=lambda message: err_console.print(f"[dim]{message}[/]"))
    print_leaderboard(leaderboard(results), console)


def _choice(option: str, resolve, value):
    """Resolve a registry name; prefix errors with the option that carried it."""
    try:
        return resolve(value)
    except GFSSError as error:
        message = str(error)
        raise GFSSError(message if message.startswith("--") else f"{option}: {message}") from None


@cli.command()
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def report(results_dir, output_format):
    """Show every stored result as a leaderboard (fold means per method)."""
    from gfss_bench.results.report import leaderboard, print_leaderboard, to_csv
    from gfss_bench.results.store import ResultStore

    results, problems = ResultStore(results_dir).load_all()
    for problem in problems:
        err_console.print(f"[red]skipped {problem.path}: {problem.reason}[/]")
    board = leaderboard(results)
    if output_format == "csv":
        click.echo(to_csv(board), nl=False)
    else:
        print_leaderboard(board, console)


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
