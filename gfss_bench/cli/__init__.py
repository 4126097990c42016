"""The `gfss-bench` command line: a thin click layer over the Python API, one module per command group."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from gfss_bench.cli import catalog, data, evaluate, results, show, train
from gfss_bench.cli.common import err_console
from gfss_bench.errors import GFSSError

MAX_MESSAGE = 4000  # characters of an error message shown


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfss-bench")
def cli() -> None:
    """gfss-bench: reproducible generalized few-shot segmentation benchmarks."""


for command in (evaluate.run, evaluate.episodes, evaluate.sweep, results.report, results.export, results.plot,
                show.show, catalog.list_command, train.train, data.data):
    cli.add_command(command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except GFSSError as error:
        message = str(error)
        if len(message) > MAX_MESSAGE:  # a last guard: messages quote at most ~200 characters of any input
            message = message[:MAX_MESSAGE // 2] + " [...] " + message[-MAX_MESSAGE // 2:]
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
