"""Train the shipped synthetic segmenters (gfss_bench/models/weights) with the current recipe.

    python scripts/train_shipped.py                # every stale one, two processes at a time
    python scripts/train_shipped.py --only synthetic5i-fold0-practical   # one of them (what the manifest records)
    python scripts/train_shipped.py --table        # the README's table of base mIoU, from the manifests

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


def table() -> str:
    """Markdown: base mIoU per benchmark, protocol and fold, with the steps run and whether the plateau was reached,
    read from the manifests (a stale or missing one is marked)."""
    lines = ["| benchmark | protocol | " + " | ".join(f"fold {f}" for f in range(4)) + " |",
             "|---|---|" + "---|" * 4]
    for benchmark, protocol in ORDER:
        cells = []
        for fold in range(get_benchmark(benchmark).num_folds):
            manifest = zoo.read_manifest(benchmark, fold, protocol) or {}
            if not is_current(benchmark, fold, protocol) or "curve" not in manifest:
                cells.append("stale")
                continue
            curve = dict((step, miou) for step, miou in manifest["curve"])
            half = curve.get(manifest["steps"] / 2)
            gain = "" if half is None else f", {100 * (curve[manifest['steps']] - half):+.1f} over the last doubling"
            cells.append(f"{100 * manifest['val_base_miou']:.1f} ({manifest['steps']} steps{gain})")
        lines.append(f"| {benchmark} | {protocol} | " + " | ".join(cells + [""] * (4 - len(cells))) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="NAME", help="train this one in this process")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    parser.add_argument("--table", action="store_true", help="print the README's table and exit")
    args = parser.parse_args()
    if args.table:
        print(table())
        return 0
    return train_one(args.only) if args.only else train_all(args.jobs)


if __name__ == "__main__":
    sys.exit(main())
