"""Train the shipped synthetic segmenters (gfss_bench/models/weights) with the current recipe.

    python scripts/train_shipped.py                # every stale one, two processes at a time
    python scripts/train_shipped.py --only synthetic5i-fold0-practical   # one of them (what the manifest records)

A segmenter is stale when its manifest's config hash is not the current one. Each runs in its own process with one
torch thread; an interrupted training resumes from its state in the cache (`zoo.training_state_file`). The
practical synthetic5i folds come first: they are what the default `gfss-bench run` uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gfss_bench.models import zoo  # noqa: E402
from gfss_bench.protocols import get_benchmark  # noqa: E402

ORDER = [(benchmark, protocol) for benchmark, protocol in
         (("synthetic5i", "practical"), ("synthetic5i", "standard"),
          ("synthetic10i", "practical"), ("synthetic10i", "standard"))]


def shipped_names() -> list[tuple[str, int, str]]:
    return [(benchmark, fold, protocol) for benchmark, protocol in ORDER
            for fold in range(get_benchmark(benchmark).num_folds)]


def is_current(benchmark: str, fold: int, protocol: str) -> bool:
    manifest = zoo.read_manifest(benchmark, fold, protocol)
    return manifest is not None and manifest.get("config_hash") == zoo.config_hash(benchmark, fold, protocol)


def train_one(name: str) -> int:
    import torch

    torch.set_num_threads(1)
    matches = [key for key in shipped_names() if zoo.weights_name(*key) == name]
    if not matches:
        print(f"error: --only {name}: not a shipped segmenter", file=sys.stderr)
        return 2
    benchmark, fold, protocol = matches[0]
    path = zoo.train_and_save(benchmark, fold, protocol, out=zoo.WEIGHTS_DIR / f"{name}.pt", progress=False,
                              log=lambda line: print(f"{name} {line}", flush=True),
                              command=f"python scripts/train_shipped.py --only {name}")
    print(f"{name}: done -> {path}", flush=True)
    return 0


def train_all(jobs: int) -> int:
    pending = [zoo.weights_name(*key) for key in shipped_names() if not is_current(*key)]
    print(f"{len(pending)} stale: {', '.join(pending) or 'none'}", flush=True)
    running: list[subprocess.Popen] = []
    failed = 0
    while pending or running:
        while pending and len(running) < jobs:
            running.append(subprocess.Popen([sys.executable, __file__, "--only", pending.pop(0)], cwd=ROOT))
        time.sleep(5)
        for process in [p for p in running if p.poll() is not None]:
            running.remove(process)
            failed += process.returncode != 0
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="NAME", help="train this one in this process")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    args = parser.parse_args()
    return train_one(args.only) if args.only else train_all(args.jobs)


if __name__ == "__main__":
    sys.exit(main())
