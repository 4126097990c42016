"""`data prepare` and `data verify`: the real datasets that --data-root points to."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from gfss_bench.cli import common
from gfss_bench.cli.common import PLUGINS, log
from gfss_bench.errors import GFSSError, resolve_option


@click.group()
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
    from gfss_bench.data.prepare import prepare_pascal

    summary = prepare_pascal(root, train_list, val_list)
    for note in summary.notes:
        common.err_console.print(f"warning: {note}", highlight=False, soft_wrap=True)
    common.console.print(f"wrote {Path(root) / 'train.txt'} ({summary.train_images} images, {summary.train_source}) and "
                  f"{Path(root) / 'val.txt'} ({summary.val_images} images); check them with "
                  f"`gfss-bench data verify pascal5i --root {root}`", highlight=False, soft_wrap=True)


@prepare.command(name="coco")
@_ROOT
@_WORKERS
def prepare_coco_command(root, workers):
    """COCO 2014: --root holds train2014/, val2014/ and annotations/instances_{train,val}2014.json."""
    from gfss_bench.data.prepare import prepare_coco

    summaries = prepare_coco(root, workers=workers, log=log)
    for split, summary in summaries.items():
        common.console.print(f"{split}: {summary.images} images, {summary.built} labels built, {summary.kept} kept "
                      "from an earlier run", highlight=False, soft_wrap=True)
    common.console.print(f"wrote {Path(root) / 'train.txt'} and {Path(root) / 'val.txt'}; check them with "
                  f"`gfss-bench data verify coco20i --root {root}`", highlight=False, soft_wrap=True)


@data.command()
@PLUGINS
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

    from gfss_bench.data.verify import verify_dataset
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
        common.console.print(table)
        for problem in result.problems[:shown]:
            common.console.print(str(problem), highlight=False, soft_wrap=True)
    if result.ok:
        common.err_console.print(f"OK: {', '.join(f'{s} {c.images} images' for s, c in result.splits.items())}, "
                          "no problems", highlight=False, soft_wrap=True)
        return
    common.err_console.print(f"{len(result.problems)} problem(s) found"
                      f"{f'; the first {shown} are listed above' if 0 < shown < len(result.problems) else ''}",
                      highlight=False, soft_wrap=True)
    sys.exit(1)
