import pytest
from rich.console import Console


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """CLI tables printed wide (no wrapping) and without colour codes, so tests can search the text."""
    import gfss_bench.cli.common

    monkeypatch.setattr(gfss_bench.cli.common, "console", Console(width=250, color_system=None))


@pytest.fixture(scope="session")
def per_query_results(tmp_path_factory):
    """base and imprint on synthetic5i fold 0 (1 shot, 2 runs, 33x33 inputs, a tiny fixed segmenter), stored with
    their per-query records: (results folder, specs, the segmenter loader)."""
    from gfss_bench.evaluation.runner import execute
    from gfss_bench.evaluation.spec import RunSpec
    from gfss_bench.results.store import ResultStore
    from tests.evaluation.test_runner import CountingLoader

    specs = [RunSpec.create(m, "synthetic5i", 0, "practical", 1, runs=2, evaluation={"image_size": 33})
             for m in ("base", "imprint")]
    path = tmp_path_factory.mktemp("per-query")
    execute(specs, ResultStore(path), segmenter_loader=CountingLoader())
    return path, specs, CountingLoader()
