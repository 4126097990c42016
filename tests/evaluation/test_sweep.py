"""Sweeps: grid expansion, resume after SIGKILL (per-run checkpoints), and two writers on one results folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.evaluation.sweep import expand, load_config, run_sweep
from gfss_bench.errors import GFSSError
from gfss_bench.results.store import ResultStore
from tests.evaluation.test_runner import CountingLoader

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # two cores shared: no thread oversubscription


def write_config(path, **config):
    path.write_text(yaml.safe_dump(config))
    return path


def confusions(result):
    return [run["confusion"] for run in result["runs"]]


def test_expand_grid(tmp_path):
    config = load_config(write_config(
        tmp_path / "s.yaml", methods=["diam", "imprint"], benchmarks="synthetic10i", protocols=["practical", "standard"],
        shots=[1, 5], options={"diam": {"iterations": [3, 5], "pi_strategy": "uniform"}}, runs=2, device="cpu"))
    specs = expand(config)
    # diam: 2 option settings; imprint: 1; x 2 protocols x 2 folds (all) x 2 shots
    assert len(specs) == (2 + 1) * 2 * 2 * 2
    assert len({s.run_id for s in specs}) == len(specs)
    diam = [s for s in specs if s.method == "diam"]
    assert {dict(s.method_options)["iterations"] for s in diam} == {3, 5}
    assert {dict(s.method_options)["pi_strategy"] for s in diam} == {"uniform"}
    assert specs[0] == RunSpec.create("diam", "synthetic10i", 0, "practical", 1,
                                      {"iterations": 3, "pi_strategy": "uniform"}, runs=2, device="cpu")
    assert len(expand(dict(config, folds=[1]))) == len(specs) // 2
    tuned = expand(dict(config, evaluation={"max_queries": 40, "support_source": "train"}, feature_precision="bf16"))
    assert {(s.evaluation.max_queries, s.evaluation.support_source, s.feature_precision) for s in tuned} == {
        (40, "train", "bf16")}
    assert {s.evaluation.image_size for s in tuned} == {97}  # the rest keep the benchmark's values


@pytest.mark.parametrize("config,message", [
    ({"methods": ["diam"], "shots_per_class": [1]}, "unknown key(s) shots_per_class"),
    ({"method": ["diam"], "methods": ["bcm"]}, "'method' is given twice"),
    ({"runs": "five"}, "'runs' (--runs) must be int"),
    ({"checkpoint": "no/such/file.pth"}, "no/such/file.pth"),
    ({"episodes": "sampled"}, "--episodes"),
    ({"methods": ["dim"]}, "unknown method 'dim'"),
    ({"methods": ["imprint"], "options": {"diam": {"iterations": 3}}}, "not among methods"),
    ({"methods": ["diam"], "options": {"diam": {"iterations": "abc"}}}, "iterations"),
    ({"shots": ["one"]}, "'shot' (--shot) must hold integers"),
    ({"folds": [7]}, "--fold 7 is out of range"),
    ({"evaluation": {"queries": 5}}, "'evaluation' must map settings"),
    ({"evaluation": {"image_size": 5000}}, "--image-size must be between 9 and 4096"),
    ({"feature_precision": "fp8"}, "--feature-precision 'fp8' is unknown"),
])
def test_bad_sweep_configs(tmp_path, config, message):
    with pytest.raises(GFSSError) as error:
        expand(load_config(write_config(tmp_path / "s.yaml", **config)))
    assert message in str(error.value)


def test_bad_yaml_is_one_line_exit_2(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("methods: [diam\n")
    result = subprocess.run([sys.executable, "-m", "gfss_bench", "sweep", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not valid YAML" in lines[0] and str(path) in lines[0]


@pytest.mark.slow  # ~28 s: a sweep process killed and restarted
def test_sweep_killed_mid_spec_resumes_at_first_missing_run(tmp_path):
    config = dict(methods=["diam"], benchmarks=["synthetic5i"], folds=[2], shots=[1], runs=3, device="cpu",
                  options={"diam": {"iterations": 3}})
    path = write_config(tmp_path / "sweep.yaml", **config)
    killed = tmp_path / "killed"
    [spec] = expand(load_config(path))
    partial = ResultStore(killed).partial_path_for(spec.run_id)
    worker = subprocess.Popen([sys.executable, "-m", "tests.evaluation.tiny_worker", str(path), str(killed)],
                              cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not partial.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert partial.exists(), worker.stderr.read().decode() if worker.poll() is not None else "timeout"
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    store = ResultStore(killed)
    checkpoint = store.load_partial(spec.run_id)
    done = len(checkpoint["runs"])
    assert 1 <= done < 3 and not store.contains(spec.run_id)

    messages = []
    [resumed] = run_sweep(load_config(path), killed, segmenter_loader=CountingLoader(), batch_size=64,
                          log=messages.append)
    assert any(f"at run {done}" in m for m in messages), messages
    assert resumed["provenance"]["resumed_runs"] == done
    assert store.contains(spec.run_id) and not partial.exists()
    assert confusions(store.load(store.path_for(spec.run_id))) == confusions(resumed)

    [reference] = run_sweep(load_config(path), tmp_path / "uninterrupted", segmenter_loader=CountingLoader(),
                            batch_size=64)
    assert reference["provenance"]["resumed_runs"] == 0
    assert confusions(resumed) == confusions(reference)
    assert [r["support_images"] for r in resumed["runs"]] == [r["support_images"] for r in reference["runs"]]

    # everything stored: the CLI lists it as stored and a rerun computes nothing (no segmenter, no data)
    listing = subprocess.run([sys.executable, "-m", "gfss_bench", "sweep", str(path), "--results-dir", str(killed),
                              "--dry-run"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and f"{spec.run_id} stored" in listing.stdout, listing.stderr
    rerun = subprocess.run([sys.executable, "-m", "gfss_bench", "sweep", str(path), "--results-dir", str(killed)],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "cached" in rerun.stderr, rerun.stderr
    sidecar = f"{spec.run_id}.queries.json.gz"  # per-query records: the checkpointed runs' kept across the kill
    assert sorted(p.name for p in killed.iterdir()) == [f"{spec.run_id}.json", sidecar]
    assert (killed / sidecar).read_bytes() == (tmp_path / "uninterrupted" / sidecar).read_bytes()


def test_two_sweeps_into_one_folder(tmp_path):
    """Two processes, overlapping grids (imprint in both), one results folder: nothing lost or corrupt."""
    common = dict(benchmarks=["synthetic5i"], folds=[0], shots=[1], runs=1, device="cpu")
    a = write_config(tmp_path / "a.yaml", methods=["base", "imprint"], **common)
    b = write_config(tmp_path / "b.yaml", methods=["imprint", "finetune"],
                     options={"finetune": {"iterations": 3}}, **common)
    shared = tmp_path / "results"
    workers = [subprocess.Popen([sys.executable, "-m", "tests.evaluation.tiny_worker", str(c), str(shared)],
                                cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in (a, b)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()
    expected = {s.run_id for c in (a, b) for s in expand(load_config(c))}
    assert len(expected) == 3
    names = [name for i in expected for name in (f"{i}.json", f"{i}.queries.json.gz")]  # result, per-query records
    assert sorted(p.name for p in shared.iterdir()) == sorted(names)  # no temporaries
    results, problems = ResultStore(shared).load_all()
    assert not problems and {r["run_id"] for r in results} == expected
    assert all(ResultStore(shared).load_query_records(result) for result in results)  # each its own, intact
    for result in results:
        assert json.loads((shared / f"{result['run_id']}.json").read_text())["checksum"] == result["checksum"]
