"""Check the synthetic-benchmark sanity targets of the foundation issue on the shipped segmenters.

On synthetic5i, practical protocol, all folds: DIaM's novel mIoU must be clearly above `imprint`'s at
1 shot, DIaM 5-shot novel above 1-shot, and DIaM's base mIoU within a few points of the `base` row.
Prints the leaderboard and the measured differences (nothing is tuned to pass).

    python benchmarks/synthetic_targets.py [--results-dir DIR] [--benchmark synthetic5i]
"""

from __future__ import annotations

import argparse

from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.results.board import Leaderboard
from gfss_bench.results.report import print_leaderboard
from gfss_bench.results.tables import leaderboard
from gfss_bench.results.store import ResultStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--benchmark", default="synthetic5i")
    parser.add_argument("--protocol", default="practical")
    args = parser.parse_args()
    from gfss_bench.protocols import get_benchmark

    folds = range(get_benchmark(args.benchmark).num_folds)
    specs = [RunSpec.create(method, args.benchmark, fold, args.protocol, shot)
             for method in ("base", "imprint", "finetune", "diam") for shot in (1, 5) for fold in folds]
    results = execute(specs, ResultStore(args.results_dir), log=print)
    board = leaderboard(results)
    print_leaderboard(Leaderboard.build(results))
    row = {(r.method, r.shot): r for r in board.itertuples()}
    diam1, diam5, imprint1, base1 = row[("diam", 1)], row[("diam", 5)], row[("imprint", 1)], row[("base", 1)]
    print(f"1-shot novel mIoU: diam {diam1.novel_miou:.2f} vs imprint {imprint1.novel_miou:.2f} "
          f"(+{diam1.novel_miou - imprint1.novel_miou:.2f})")
    print(f"diam novel mIoU: 5-shot {diam5.novel_miou:.2f} vs 1-shot {diam1.novel_miou:.2f} "
          f"(+{diam5.novel_miou - diam1.novel_miou:.2f})")
    print(f"1-shot base mIoU: diam {diam1.base_miou:.2f} vs base {base1.base_miou:.2f} "
          f"({diam1.base_miou - base1.base_miou:+.2f})")


if __name__ == "__main__":
    main()
