"""Hermetic tests: every session uses its own cache folder, so generated data and trained segmenters are
produced by the code under test, never picked up from a developer's ~/.cache."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("gfss-cache")
    previous = os.environ.get("GFSS_BENCH_CACHE")
    os.environ["GFSS_BENCH_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("GFSS_BENCH_CACHE", None)
    else:
        os.environ["GFSS_BENCH_CACHE"] = previous
