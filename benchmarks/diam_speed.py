"""Speed and memory of gfss_bench's `diam` against the official-style autograd reference.

    python benchmarks/diam_speed.py [--quick]

Two shapes, 8 queries (= 8 tasks), C = 512, 53x53 features, 417x417 labels, 2 CPU threads
(--threads to change):
PASCAL-5i 1-shot (B+1 = 16, N = 5, K = 1) and COCO-20i 5-shot (B+1 = 61, N = 20, K = 5).
Each (implementation, shape) runs in a fresh subprocess that builds the same seeded inputs,
runs a few optimisation steps (the PASCAL runs are repeated 3 times, interleaved, and the best time
is kept: the machine may be shared) and reports seconds per step and the peak resident-memory growth
during the run (VmHWM after resetting it via /proc/self/clear_refs, else ru_maxrss, minus the
resident size before the run). The parent compares the probabilities of the two implementations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "pascal-1shot": dict(num_base_and_bg=16, num_novel=5, shots=1),
    "coco-5shot": dict(num_base_and_bg=61, num_novel=20, shots=5),
}
CHANNELS, FEAT, LABEL, QUERIES = 512, 53, 417, 8


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_task(shape: str, seed: int = 0, queries: int = QUERIES, channels: int = CHANNELS, feat: int = FEAT,
               label: int = LABEL):
    """Seeded random inputs, built in place (no large temporaries that would inflate the baseline).
    The sizes default to the real ones; benchmarks/gpu_check.py also builds larger batches and tiny shapes."""
    import torch

    from gfss_bench.methods.contract import Task

    spec = SHAPES[shape]
    nb, n, k = spec["num_base_and_bg"], spec["num_novel"], spec["shots"]
    gen = torch.Generator().manual_seed(seed)
    base_weight = torch.randn(channels, nb, generator=gen).mul_(0.05)
    base_bias = torch.randn(nb, generator=gen).mul_(0.1)
    sfeat = torch.randn(n, k, channels, feat, feat, generator=gen).relu_()
    qfeat = torch.randn(queries, channels, feat, feat, generator=gen).relu_()
    slab = torch.zeros(n, k, label, label, dtype=torch.long)
    for j in range(n):
        for s in range(k):
            y0, x0 = torch.randint(0, label // 2, (2,), generator=gen).tolist()
            hh, ww = torch.randint(label // 8, label // 2, (2,), generator=gen).tolist()
            slab[j, s, y0:y0 + hh, x0:x0 + ww] = nb + j
            pad = int(torch.randint(0, label // 4, (1,), generator=gen))
            if pad:
                slab[j, s, label - pad:, :] = 255  # padding, as for non-square images
    qlab = torch.randint(0, nb + n, (queries, label, label), generator=gen)
    qlab[:, :, label - 40 * label // LABEL:] = 255  # 40 columns at 417
    return Task(base_weight=base_weight, base_bias=base_bias, support_features=sfeat, support_labels=slab,
                query_features=qfeat, query_valid=qlab != 255, query_labels=qlab)


def child(impl: str, shape: str, steps: int, out: str, threads: int) -> None:
    import gc

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from gfss_bench.methods import build_method
    from tests.methods.diam_reference import reference_diam

    task = build_task(shape)
    gc.collect()
    rss_before = _status_kib("VmRSS")
    reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if impl == "reference":
        probs = reference_diam(task, iterations=steps)
    else:
        probs = build_method("diam", iterations=steps).predict(task)
    seconds = time.perf_counter() - t0
    if reset and _status_kib("VmHWM") is not None:
        growth_kib = _status_kib("VmHWM") - rss_before
    else:  # ru_maxrss cannot be reset: growth over the earlier peak (a lower bound)
        growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    torch.save(probs, out)
    print(json.dumps({"seconds_per_step": seconds / steps, "growth_mib": growth_kib / 1024}))
    # note: seconds include the one-off setup (prototypes, pi, packing), spread over the steps


def run_child(impl: str, shape: str, steps: int, out: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, shape, str(steps), out, str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{impl}/{shape} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, shape, steps, out, threads = args.child
        child(impl, shape, int(steps), out, int(threads))
        return

    import torch

    steps = {"pascal-1shot": 3 if args.quick else 12, "coco-5shot": 1 if args.quick else 3}
    repeats = {"pascal-1shot": 1 if args.quick else 3, "coco-5shot": 1}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            res: dict = {}
            for _ in range(repeats[shape]):  # interleaved; best time and largest growth are kept
                for impl in ("reference", "gfss_bench"):
                    out = os.path.join(tmp, f"{impl}-{shape}.pt")
                    run = run_child(impl, shape, steps[shape], out, args.threads)
                    best = res.setdefault(impl, run)
                    best["seconds_per_step"] = min(best["seconds_per_step"], run["seconds_per_step"])
                    best["growth_mib"] = max(best["growth_mib"], run["growth_mib"])
                    best["probs"] = torch.load(out)
            diff = (res["reference"]["probs"] - res["gfss_bench"]["probs"]).abs().max().item()
            rows.append((shape, steps[shape], res["reference"], res["gfss_bench"], diff))

    print(f"DIaM, {QUERIES} queries/tasks, C={CHANNELS}, {FEAT}x{FEAT} features, {LABEL}x{LABEL} labels, "
          f"{args.threads} threads, torch {torch.__version__}")
    head = (f"{'shape':<14}{'steps':>6}{'ref s/step':>12}{'ours s/step':>13}{'speed-up':>10}"
            f"{'ref MiB':>10}{'ours MiB':>10}{'mem ratio':>11}{'max |dp|':>11}")
    print(head)
    print("-" * len(head))
    for shape, n, ref, ours, diff in rows:
        speed = ref["seconds_per_step"] / ours["seconds_per_step"]
        mem = ours["growth_mib"] / max(ref["growth_mib"], 1e-9)
        print(f"{shape:<14}{n:>6}{ref['seconds_per_step']:>12.3f}{ours['seconds_per_step']:>13.3f}{speed:>9.1f}x"
              f"{ref['growth_mib']:>10.0f}{ours['growth_mib']:>10.0f}{mem:>11.3f}{diff:>11.2e}")


if __name__ == "__main__":
    main()
