"""Seconds per adaptation step of gfss_bench's `classtrans` next to its autograd reference and to `diam`.

    python benchmarks/classtrans_speed.py [--quick] [--threads N]

One process, the same seeded inputs as benchmarks/diam_speed.py: PASCAL-5i 1-shot (B+1 = 16, N = 5, K = 1),
C = 512, 53x53 features, 417x417 labels, 8 queries (= 8 tasks); --quick uses 2 queries and 64 channels. Three
implementations run `steps` adaptation steps, interleaved, `repeats` times, best time kept (the machine may be
shared): `classtrans` (all queries batched), the one-query-at-a-time float32 autograd reference of
tests/methods/test_classtrans.py (the official structure), and `diam`. Seconds include the one-off setup (the
optimal-transport initialisation, packing), spread over the steps. Ratios are between figures of this run; the
largest probability difference between `classtrans` and the reference is printed as a check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 queries, 64 channels, 2 steps, 1 repeat")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from diam_speed import build_task  # noqa: E402  (benchmarks/ is not a package)

    from gfss_bench.methods import build_method
    from tests.methods.test_classtrans import reference_classtrans

    torch.set_num_threads(args.threads)
    queries, channels = (2, 64) if args.quick else (8, 512)
    steps, repeats = (2, 1) if args.quick else (5, 3)
    task = build_task("pascal-1shot", queries=queries, channels=channels)
    task.query_labels = None

    runners = {
        "classtrans": lambda: build_method("classtrans", iterations=steps).predict(task),
        "reference": lambda: reference_classtrans(task, iterations=steps, dtype=torch.float32),
        "diam": lambda: build_method("diam", iterations=steps).predict(task),
    }
    best = {name: float("inf") for name in runners}
    outputs = {}
    for _ in range(repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            outputs[name] = run()
            best[name] = min(best[name], (time.perf_counter() - started) / steps)
    diff = (outputs["classtrans"] - outputs["reference"]).abs().max().item()

    print(f"ClassTrans, pascal-1shot, {queries} queries/tasks, C={channels}, 53x53 features, {steps} steps, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'classtrans s/step':>18}{'reference s/step':>18}{'speed-up':>10}{'diam s/step':>13}"
          f"{'classtrans/diam':>17}{'max |dp|':>11}")
    print(f"{best['classtrans']:>18.3f}{best['reference']:>18.3f}{best['reference'] / best['classtrans']:>9.1f}x"
          f"{best['diam']:>13.3f}{best['classtrans'] / best['diam']:>16.1f}x{diff:>11.2e}")


if __name__ == "__main__":
    main()
