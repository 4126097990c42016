"""`list`: what is registered (methods, protocols, benchmarks, segmenter families) and where it came from."""

from __future__ import annotations

import click
from rich.table import Table

from gfss_bench.cli import common
from gfss_bench.cli.common import PLUGINS


@click.command(name="list")
@PLUGINS
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
    common.console.print(table)
    table = Table(title="protocols")
    table.add_column("name")
    table.add_column("description")
    for name, protocol in PROTOCOLS.items():
        table.add_row(name, protocol.description)
    common.console.print(table)
    table = Table(title="benchmarks")
    for column in ("name", "folds", "novel classes per fold", "image size", "description", "from"):
        table.add_column(column)
    for name, bench in BENCHMARKS.items():
        table.add_row(name, str(bench.num_folds), str(len(bench.fold_novel_classes[0])), str(bench.image_size),
                      bench.description, BENCHMARKS.origin(name))
    common.console.print(table)
    table = Table(title="segmenter families (run --segmenter FAMILY:REF)")
    for column in ("name", "description", "from"):
        table.add_column(column)
    for name, family in SEGMENTER_FAMILIES.items():
        table.add_row(name, family.description, SEGMENTER_FAMILIES.origin(name))
    common.console.print(table)
