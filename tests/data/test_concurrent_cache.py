"""Two processes generating the synthetic dataset into one fresh cache at once both succeed."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ("import gfss_bench.data.synthetic as s; s.SPLIT_SIZES.update(train=6, val=6); "
          "print(s.ensure_synthetic_dataset(progress=False))")


def test_concurrent_dataset_generation(tmp_path):
    env = dict(os.environ, GFSS_BENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    roots = {out.strip() for out, _ in outputs}
    assert len(roots) == 1
    root = Path(roots.pop())
    for split in ("train", "val"):
        lines = (root / f"{split}.txt").read_text().splitlines()
        assert len(lines) == 6 and all((root / rel).is_file() for line in lines for rel in line.split())
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # the loser's temporary folder is gone
