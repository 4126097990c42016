"""benchmarks/gpu_check.py --device cpu --quick: every check runs through the same code as on a GPU and passes,
and every figure it writes is present and finite."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"diam_probabilities", "bcm_decisions", "pspnet_autocast", "synthetic_run", "torchrun", "train_amp"}
MEASUREMENTS = {"diam_speed", "feature_speed", "end_to_end"}


def _numbers(value):
    """Every int/float leaf of a JSON value (booleans excluded)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow  # about 1 minute on a 2-core CPU: run by .ci/run with `pytest -m slow`
def test_quick_cpu_run_passes_and_writes_finite_figures(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("cpu-*-quick.json")  # the work folder is not left in OUT
    assert list(tmp_path.iterdir()) == [path]
    report = json.loads(path.read_text())
    entries = report["entries"]
    assert set(entries) == CHECKS | MEASUREMENTS and report["passed"] is True
    for name, entry in entries.items():
        assert entry["passed"] is True and "error" not in entry, (name, entry)
        assert entry["kind"] == ("check" if name in CHECKS else "measurement")
        assert entry["figures"] and all(math.isfinite(x) for x in _numbers(entry["figures"])), (name, entry)
        assert name in CHECKS or isinstance(entry["goal_met"], bool)

    figures = {name: entry["figures"] for name, entry in entries.items()}
    # on the CPU "the device" is the CPU: the same code on the same inputs gives the same numbers
    assert figures["diam_probabilities"]["max_abs_difference_tf32_off"] == 0.0
    assert figures["bcm_decisions"]["pixel_agreement"] == 1.0 and figures["bcm_decisions"]["heads_equal"]
    for compared in (figures["synthetic_run"]["fp32_features"], figures["torchrun"]["processes_1"]["results"]):
        assert len(compared) == 5 and all(r["identical"] and r["agreement"] == 1.0 for r in compared.values())
    assert figures["torchrun"]["processes_1"]["world_size"] == [1] and figures["torchrun"]["backend"] == "gloo"
    train = figures["train_amp"]
    assert train["amp"] is False and train["last_third_mean"] < train["first_third_mean"]
    assert train["reload_relative_difference"] == 0.0
    assert 0 < figures["pspnet_autocast"]["bf16_vs_fp32"] < 0.05
    for shape in ("pascal-1shot", "coco-5shot"):
        row = figures["diam_speed"][shape]
        assert row["reference"]["seconds_per_step"] > 0 and row["gfss_bench"]["seconds_per_step"] > 0
    end = figures["end_to_end"]
    assert end["queries_per_run"] == 12 - 5  # the val images minus the 5 supports (one per novel class)
    assert end["run0_agreement_with_reference"] >= 0.999  # gfss-bench's DIaM and the autograd reference agree
    assert report["environment"]["quick"] is True and report["environment"]["device"] == "cpu"
