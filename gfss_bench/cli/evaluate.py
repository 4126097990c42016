"""`run`, `episodes` and `sweep`: evaluate methods on seeded episodes (or list the episodes)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from gfss_bench.cli import common
from gfss_bench.cli.common import EPISODE_GRID, PLUGINS, SUPPORT_SETTINGS, log, parse_method_options
from gfss_bench.errors import resolve_option


@click.command()
@PLUGINS
@click.option("--method", "-m", "methods", multiple=True, default=("diam",), show_default=True,
              help="Method to run (repeat for several); see `gfss-bench list`.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True,
              help="standard or practical (repeatable).")
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True,
              help="Benchmark name, or a benchmark YAML file (see README, \"A benchmark from a YAML file\").")
@EPISODE_GRID
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
              help="Evaluation input side, 9 to 4096, one the segmenter takes (PSPNet: (S-1) % 8 == 0) "
                   "(default: the benchmark's, 417 on the real ones).")
@SUPPORT_SETTINGS
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
                "option": parse_method_options(option_pairs, methods), "results_dir": results_dir, "force": force,
                "data_root": data_root, "skip_bad_images": skip_bad_images, "checkpoint": checkpoint,
                "segmenter": segmenter_ref, "image_size": image_size, "queries": queries,
                "support_source": support_source, "min_support_pixels": min_support_pixels,
                "single_novel_supports": single_novel_supports, "episodes": episodes,
                "feature_precision": feature_precision, "feature_cache": feature_cache,
                "feature_memory": feature_memory, "workers": loader_workers}
    planned = plan(settings)
    workers = distributed.from_environment(device)
    try:
        results = planned.execute(log, workers)
    finally:
        distributed.shutdown(workers)
    if workers.is_main:
        print_leaderboard(Leaderboard.build(results), common.console)




@click.command()
@PLUGINS
@click.option("--benchmark", "-b", required=True,
              help="Benchmark name, or a benchmark YAML file (see README, \"A benchmark from a YAML file\").")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder of a real benchmark (holds val.txt); not needed for the synthetic ones.")
@EPISODE_GRID
@click.option("--episodes", "sampler", type=click.Choice(["diam", "independent"]), default="diam", show_default=True,
              help="Support sampler: diam (the official one) or independent (each run from its own seed).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: what `run --episodes FILE.json` reads.")
@SUPPORT_SETTINGS
@click.option("--skip-bad-images", is_flag=True, help="Leave out unreadable images/labels, as `run` does.")
def episodes(benchmark, data_root, folds, shots, runs, seed, sampler, output_format, queries, support_source,
             min_support_pixels, single_novel_supports, skip_bad_images):
    """Print each run's support slots per novel class and its queries, without loading any model (json: with a
    query cap, each run's query stems in evaluation order)."""
    import json

    from gfss_bench.evaluation.plan import evaluation_overrides
    from gfss_bench.evaluation.runner import list_episodes
    from gfss_bench.evaluation.spec import validate_settings
    from gfss_bench.protocols import resolve_benchmark

    bench = resolve_option("--benchmark", resolve_benchmark, benchmark)
    for fold in folds:
        bench.check_fold(fold)
    validate_settings(shots=shots, runs=runs)
    settings = bench.evaluation_settings(**evaluation_overrides({
        "queries": queries, "support_source": support_source, "min_support_pixels": min_support_pixels,
        "single_novel_supports": single_novel_supports}))
    documents = list_episodes(bench, folds or range(bench.num_folds), dict.fromkeys(shots), runs, seed, sampler,
                              settings, Path(data_root) if data_root else None, skip_bad_images, log)
    if output_format == "json":
        click.echo(json.dumps(documents, indent=2))
        return
    for document in documents:
        table = Table(title=f"{bench.name} fold {document['fold']} {document['shot']}-shot: {sampler} episodes, "
                            f"seed {seed}")
        for column in ("run", "class", "support images (slots in order)", "queries (distinct)"):
            table.add_column(column)
        for run in document["runs"]:
            queries = f"{run['num_queries']} ({run['distinct_queries']})"
            for number, (name, stems) in enumerate(run["supports"].items()):
                table.add_row(str(run["run"]) if number == 0 else "", name, " ".join(stems),
                              queries if number == 0 else "")
        common.console.print(table)


@click.command()
@PLUGINS
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where result files are stored (default: the config's results_dir, else results).")
@click.option("--force", is_flag=True, help="Recompute even when a result with the same id is stored.")
@click.option("--dry-run", is_flag=True,
              help="Only list the specs of the grid and whether each is stored, damaged, partial or missing.")
def sweep(config, results_dir, force, dry_run):
    """Evaluate a grid from a YAML file; stored specs are skipped, so rerunning resumes an interrupted sweep."""
    from gfss_bench.evaluation.sweep import expand, load_config, results_dir_of, run_sweep
    from gfss_bench.results.board import Leaderboard
    from gfss_bench.results.report import print_leaderboard
    from gfss_bench.results.store import ResultStore

    settings = load_config(config)
    where = f"sweep config {config}"
    if dry_run:
        specs = expand(settings, where)  # checks the settings first
        store = ResultStore(results_dir_of(settings, results_dir))
        for spec in specs:
            state = store.state(spec.run_id)  # stored, damaged (recomputed by a real run), partial or missing
            options = ",".join(f"{k}={v}" for k, v in spec.method_options)
            click.echo(f"{spec.run_id} {state:8s} {spec.method}({options}) {spec.benchmark} {spec.protocol} "
                       f"fold {spec.fold} {spec.shot}-shot {spec.convention}")
        return
    results = run_sweep(settings, results_dir, where, force=force, log=log)
    print_leaderboard(Leaderboard.build(results), common.console)
