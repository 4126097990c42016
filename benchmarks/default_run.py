"""Time the README's main job on a fresh cache, then the identical second call (a cache hit).

Target (foundation issue): the first call finishes within 5 minutes on 2 CPU cores, dataset
generation included (shipped segmenters used); the second takes seconds.

    python benchmarks/default_run.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder instead of a temporary one")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gfss-default-run-"))
    env = dict(os.environ, GFSS_BENCH_CACHE=str(work / "cache"))
    command = [sys.executable, "-m", "gfss_bench", "run", "--method", "diam", "--protocol", "practical",
               "--results-dir", str(work / "results")]
    first = timed(command, env)
    second = timed(command, env)
    print(f"first call (fresh cache):  {first:7.1f} s   target <= 300 s: {'ok' if first <= 300 else 'MISSED'}")
    print(f"second call (cache hit):   {second:7.1f} s   ({first / second:.0f}x faster than the first)")


if __name__ == "__main__":
    main()
