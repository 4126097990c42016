"""The example plugin (examples/gfss-bench-plugin-example) installed with pip and used through the CLI, and the
plugin mechanism's errors and origins.

The package is installed with `pip install --target` into a temporary folder that only this test's subprocesses
see (PYTHONPATH): its entry points are found exactly as for an installed distribution, and the shared
environment is left alone (a plugin installed there would load in every other process using it).
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gfss_bench.methods import Task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gfss-bench-plugin-example"


def gfss(*args, pythonpath=(), check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath), COLUMNS="400")  # no wrapping
    result = subprocess.run([sys.executable, "-m", "gfss_bench", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example package pip-installed (no dependencies, no network) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "pkg")  # the build writes build/ and *.egg-info next to the sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(root / "site"), str(root / "pkg")], check=True, timeout=300)
    return root / "site"


def test_example_runs_beside_diam_through_run_report_and_export(site, tmp_path):
    listed = gfss("list", pythonpath=[site]).stdout
    assert "nearest-prototype" in listed and "scale=10.0" in listed and "pooled" in listed
    assert "entry point nearest-prototype of gfss-bench-plugin-example 0.1.0" in " ".join(listed.split())

    results = tmp_path / "results"
    common = ["-b", "synthetic5i", "-f", "0", "--runs", "1", "--queries", "20", "--image-size", "49", "--device",
              "cpu", "--results-dir", str(results)]  # 49x49 inputs: features of the 500 val images in a few seconds
    gfss("run", "-m", "nearest-prototype", "-m", "diam", "-o", "diam.iterations=10", *common, pythonpath=[site])
    gfss("run", "-m", "nearest-prototype", "--segmenter", "pooled:2", *common, pythonpath=[site])
    records = {(r["spec"]["method"], r["spec"]["segmenter"]): r
               for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    assert set(records) == {("nearest-prototype", "builtin"), ("diam", "builtin"), ("nearest-prototype", "pooled:2")}
    plugin, diam = records["nearest-prototype", "builtin"], records["diam", "builtin"]
    assert plugin["runs"][0]["support_images"] == diam["runs"][0]["support_images"]  # the same episode
    assert plugin["runs"][0]["num_queries"] == diam["runs"][0]["num_queries"] == 20
    assert dict(plugin["spec"]["method_options"]) == {"scale": 10.0}
    assert 0 < plugin["aggregate"]["novel"]["mean"] < 1  # it finds novel pixels, imperfectly
    pooled = records["nearest-prototype", "pooled:2"]
    assert pooled["runs"][0]["support_images"] == plugin["runs"][0]["support_images"]
    assert pooled["runs"][0]["confusion"] != plugin["runs"][0]["confusion"]  # other features, other predictions

    def board(*pythonpath):
        text = gfss("report", "--results-dir", str(results), "--format", "csv", pythonpath=pythonpath).stdout
        return sorted((row["method"], row["segmenter"], row["novel_miou"]) for row in csv.DictReader(io.StringIO(text)))

    rows = board(site)
    assert [row[:2] for row in rows] == [("diam(iterations=10)", "builtin"), ("nearest-prototype", "builtin"),
                                         ("nearest-prototype", "pooled:2")]  # the plugin's rows beside DIaM's
    assert rows[1][2] == f"{100 * plugin['aggregate']['novel']['mean']:.2f}"
    assert board() == rows  # without the plugin installed, its stored results still show
    markdown = gfss("export", "--results-dir", str(results), "--format", "markdown", pythonpath=[site]).stdout
    assert "nearest-prototype" in markdown and "diam" in markdown


def test_method_scores_softmax_of_scaled_cosine_to_prototypes():
    """Hand-made task: 2-d features, background/base prototypes along the axes, one novel class."""
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        from gfss_bench_plugin_example.method import NearestPrototype
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
    base_weight = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # [C=2, B+1=2]: background along x, base class along y
    support = torch.tensor([[3.0, 3.0], [1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 1, 2, 1, 3)  # [N, K, C, h, w]
    support_labels = torch.tensor([[[[2, 0, 255]]]])  # only pixel 0 is novel
    query = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 4.0]]).t().reshape(1, 2, 1, 3)
    task = Task(base_weight, torch.tensor([7.0, -7.0]), support, support_labels, query,
                torch.ones(1, 1, 3, dtype=torch.bool))
    probs = NearestPrototype().predict(task)  # scale 10
    diagonal = 2 ** -0.5
    cosine = torch.tensor([[1.0, 0.0, diagonal], [diagonal, diagonal, 1.0], [0.0, 1.0, diagonal]])  # [pixel, class]
    expected = F.softmax(10 * cosine, dim=1).t().reshape(1, 3, 1, 3)
    assert probs.shape == (1, 3, 1, 3)
    assert torch.allclose(probs, expected, atol=1e-6)


def _fake_distribution(root, entry_points):
    """A dist-info folder as pip writes it, declaring `entry_points` (text of entry_points.txt)."""
    info = root / "fake_plugin-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(entry_points)
    return root


def _readme_method():
    """The "method in one file" of the README, verbatim."""
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    return readme.split("# my_methods.py\n", 1)[1].split("```", 1)[0]


def test_plugin_module_origin_and_errors(tmp_path):
    (tmp_path / "my_methods.py").write_text(_readme_method())
    listed = gfss("list", "--plugin", "my_methods", pythonpath=[tmp_path]).stdout
    row = next(line for line in listed.splitlines() if "sharp-imprint" in line)
    assert "temperature=0.5" in row and "--plugin my_methods" in row and "built-in" not in row
    assert "built-in" in next(line for line in listed.splitlines() if line.startswith("│ imprint "))
    (tmp_path / "sweep.yaml").write_text("plugins: [my_methods]\nmethods: [sharp-imprint]\nfolds: [1]\n")
    planned = gfss("sweep", str(tmp_path / "sweep.yaml"), "--dry-run", "--results-dir", str(tmp_path / "r"),
                   pythonpath=[tmp_path]).stdout
    assert "missing  sharp-imprint(temperature=0.5) synthetic5i practical fold 1 1-shot" in planned

    (tmp_path / "my_benchmarks.py").write_text(
        "from gfss_bench.protocols import Benchmark\n"
        "TINY = Benchmark('tiny', 'two folds of two synthetic classes', 'synthetic', ('a', 'b', 'c', 'd', 'e'), "
        "((1, 2), (3, 4)))\n")
    benchmarks = _fake_distribution(tmp_path / "benchmarks", "[gfss_bench.benchmarks]\ntiny = my_benchmarks:TINY\n")
    listed = gfss("list", pythonpath=[benchmarks, tmp_path]).stdout
    row = next(line for line in listed.splitlines() if line.startswith("│ tiny "))
    assert "two folds of two synthetic classes" in row and "entry point tiny of fake-plugin 1.2" in row

    missing = gfss("list", "--plugin", "no_such_module", check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--plugin no_such_module: no module named 'no_such_module'" in " ".join(missing.stderr.split())

    broken = _fake_distribution(tmp_path / "broken", "[gfss_bench.methods]\nghost = not_a_module:Ghost\n")
    failed = gfss("run", "-m", "diam", pythonpath=[broken], check=False)
    message = " ".join(failed.stderr.split())
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "plugin entry point ghost of fake-plugin 1.2 (gfss_bench.methods: ghost = not_a_module:Ghost)" in message

    duplicate = _fake_distribution(tmp_path / "duplicate",
                                   "[gfss_bench.methods]\ndiam = gfss_bench.methods.imprint:Imprint\n")
    clash = gfss("list", pythonpath=[duplicate], check=False)
    assert clash.returncode == 2
    assert "method 'diam' is already registered (built-in)" in " ".join(clash.stderr.split())
    renamed = _fake_distribution(tmp_path / "renamed",
                                 "[gfss_bench.methods]\nimprint2 = gfss_bench.methods.imprint:Imprint\n")
    again = gfss("list", pythonpath=[renamed], check=False)
    assert again.returncode == 2 and "Imprint is already registered as method 'imprint'" in " ".join(again.stderr.split())
