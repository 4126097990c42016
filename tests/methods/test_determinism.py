"""Same task and seed -> identical probabilities and confusion matrix in two separate processes (CPU),
for every registered method."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from gfss_bench.methods import METHODS
from tests.methods.tasks import make_task

REPO = Path(__file__).resolve().parents[2]
FAST_OPTIONS = {"diam": dict(iterations=3), "finetune": dict(iterations=3)}
SCRIPT = """
import sys, torch
from gfss_bench.scoring import score_probabilities
from gfss_bench.methods import METHODS, build_method
from tests.methods.test_determinism import FAST_OPTIONS
task = torch.load(sys.argv[1], weights_only=False)
out = {}
for name in METHODS.names():
    method = build_method(name, **FAST_OPTIONS.get(name, {}))
    probs = method.fit(task).predict(task)
    out[name] = (probs, score_probabilities(probs.float(), task.query_labels, task.num_classes))
torch.save(out, sys.argv[2])
"""


def test_every_method_is_deterministic_across_processes(tmp_path):
    task = make_task(num_base=4, num_novel=2, shots=2, queries=3, seed=11)
    task.seed = 1234
    torch.save(task, tmp_path / "task.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count in both processes, no oversubscription
    outputs = []
    for i in range(2):
        path = tmp_path / f"out{i}.pt"
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "task.pt"), str(path)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(torch.load(path, weights_only=False))
    first, second = outputs
    assert set(first) == set(METHODS.names()) and len(first) >= 5
    for name in first:
        assert torch.equal(first[name][0], second[name][0]), name  # bit-identical probabilities
        assert torch.equal(first[name][1], second[name][1]), name  # and confusion matrices
        assert first[name][1].sum() == (task.query_labels != 255).sum()
