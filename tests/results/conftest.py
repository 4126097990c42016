import pytest
from rich.console import Console


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """CLI tables printed wide (no wrapping) and without colour codes, so tests can search the text."""
    import gfss_bench.cli.common

    monkeypatch.setattr(gfss_bench.cli.common, "console", Console(width=250, color_system=None))
