"""`torchrun -m gfss_bench run` on CPU (gloo, 2 processes) equals the single-process run bit for bit."""

import json
import os
import subprocess
import sys

import pytest

ARGS = ["run", "-m", "base", "-m", "imprint", "-m", "diam", "-o", "diam.iterations=5", "-f", "0", "--runs", "2",
        "--device", "cpu", "--batch-size", "64"]


def _stored(folder):
    """run id -> (per-run confusion matrices, support images, provenance) of every result in `folder`."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        out[record["run_id"]] = ([r["confusion"] for r in record["runs"]],
                                 [r["support_images"] for r in record["runs"]], record["provenance"])
    return out


@pytest.mark.parametrize("memory", ["4", pytest.param("0", marks=pytest.mark.slow)],  # each ~30 s
                         ids=["features-in-memory", "features-streamed"])
def test_two_gloo_processes_equal_one_process(tmp_path, memory):
    """Both sides use one thread per process (torchrun's default): float results depend on the thread count."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ARGS + ["--feature-memory", memory]
    single = subprocess.run([sys.executable, "-m", "gfss_bench"] + args + ["--results-dir", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gfss_bench"] + args + ["--results-dir", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _stored(tmp_path / "one"), _stored(tmp_path / "two")
    assert set(one) == set(two) and len(one) == 3  # same run ids: the process count is not part of the spec
    for run_id in one:
        assert one[run_id][0] == two[run_id][0]  # confusion matrices, bit for bit
        assert one[run_id][1] == two[run_id][1]
        sidecar = f"{run_id}.queries.json.gz"  # the per-query records, gathered from both ranks in query order
        assert (tmp_path / "one" / sidecar).read_bytes() == (tmp_path / "two" / sidecar).read_bytes()
        assert one[run_id][2]["world_size"] == 1 and two[run_id][2]["world_size"] == 2
        assert two[run_id][2]["feature_storage"] == ("memory" if memory == "4" else "streamed")
    assert done.stdout.count("synthetic5i, practical protocol") == 1  # only rank 0 prints the leaderboard
