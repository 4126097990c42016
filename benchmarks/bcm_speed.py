"""BCM fit time per run and predict time per query, next to DIaM's adaptation time per query; with
`--solvers sklearn sklearnex`, the two solvers side by side (fit time and the query pixels they decide differently).

    python benchmarks/bcm_speed.py [--quick] [--shots 1 5] [--channels 512] [--threads 1]
    python benchmarks/bcm_speed.py --solvers sklearn sklearnex [--quick] [--shots 1 5]
    python benchmarks/bcm_speed.py --solvers sklearn sklearnex --synthetic [--runs 1] [--shots 1 5]

`--synthetic` compares the solvers on the synthetic5i benchmark (fold 0, the shipped segmenter's features, every
query of each run) instead of random features: both solvers fit the same supports with the same down-sampling
draws, and every query pixel's decision is compared.

Shape (default, PASCAL-5i-like): C = 512 features at 53x53, labels 417x417, B+1 = 16, N = 5 novel
classes, K shots, 8 queries; seeded random post-ReLU features with a distinctive direction added on
each novel object (objects cover 10-30% of a support image). BCM runs with the official settings
(scikit-learn, 10 C values x 5 CV folds per head, ensemble, background down-sampling); DIaM with its
official defaults (100 steps) unless --diam-iterations. Everything is measured in this process, in
this run, with `--threads` torch/BLAS threads; the ratios compare numbers taken side by side.
A PASCAL run scores about 1449 queries, hence the per-run totals. Random features are not real
features: the number of table entries and of L-BFGS iterations (hence the fit time) depend on the
data, so treat the fit time as indicative.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def build_task(num_base_and_bg: int, num_novel: int, shots: int, queries: int, channels: int, feat: int,
               label: int, seed: int = 0):
    from gfss_bench.methods.contract import Task

    gen = torch.Generator().manual_seed(seed)
    nb = num_base_and_bg
    weight = torch.randn(channels, nb, generator=gen) * 0.05
    bias = torch.randn(nb, generator=gen) * 0.1
    sfeat = torch.relu(torch.randn(num_novel, shots, channels, feat, feat, generator=gen))
    labels = torch.zeros(num_novel, shots, label, label, dtype=torch.long)
    for j in range(num_novel):
        for s in range(shots):
            side = int(label * (0.3 + 0.25 * torch.rand(1, generator=gen).item()))
            y0, x0 = torch.randint(0, label - side, (2,), generator=gen).tolist()
            labels[j, s, y0:y0 + side, x0:x0 + side] = nb + j
    labels[..., -20:, :] = 255
    small = F.interpolate(labels.float().flatten(0, 1).unsqueeze(1), size=(feat, feat), mode="nearest")
    small = small.view(num_novel, shots, 1, feat, feat)
    directions = torch.relu(torch.randn(num_novel, channels, generator=gen))
    for j in range(num_novel):
        sfeat += (small == nb + j).float() * directions[j].view(1, 1, channels, 1, 1)
    # queries: support-like images (an object of a random novel class on noise)
    qfeat = torch.relu(torch.randn(queries, channels, feat, feat, generator=gen))
    for q in range(queries):
        j = q % num_novel
        qfeat[q, :, feat // 4: feat // 2, feat // 4: feat // 2] += directions[j].view(channels, 1, 1)
    valid = torch.ones(queries, label, label, dtype=torch.bool)
    return Task(weight, bias, sfeat, labels, qfeat, valid, None, seed=seed)


def differing_pixels(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """(valid pixels whose argmax differs between two probability maps, valid pixels)."""
    return int(((a.argmax(1) != b.argmax(1)) & valid).sum()), int(valid.sum())


def compare_solvers(task, solvers: list[str]) -> str:
    """Fit time per solver and the query pixels the later solvers decide differently from the first."""
    from gfss_bench.methods import build_method

    decisions, times = [], []
    for solver in solvers:
        fitted, seconds = timed(lambda: build_method("bcm", solver=solver).fit(task))
        decisions.append(fitted.predict(task))
        times.append(seconds)
    fits = " ".join(f"{solver} fit {seconds:.1f} s" for solver, seconds in zip(solvers, times))
    diffs = [differing_pixels(decisions[0], other, task.query_valid) for other in decisions[1:]]
    return fits + "".join(f"; {d} of {n} pixels ({100 * d / n:.3f}%) differ" for d, n in diffs)


def synthetic_comparison(solvers: list[str], shots: list[int], runs: int) -> None:
    """The solvers on synthetic5i fold 0 through the runner: one wrapper method fits one BCM per solver (each
    continuing its own stream across runs, so both draw alike) and counts the differing query pixels."""
    import tempfile

    from gfss_bench.evaluation.runner import execute
    from gfss_bench.evaluation.spec import RunSpec
    from gfss_bench.methods import Fitted, Method, build_method, register_method
    from gfss_bench.results.store import ResultStore

    tally = {"differ": 0, "pixels": 0, "fit": {solver: 0.0 for solver in solvers}, "models": {}}

    class Both(Fitted):
        def __init__(self, fitted):
            self.fitted = fitted

        def predict(self, task):
            outputs = [f.predict(task) for f in self.fitted]
            for other in outputs[1:]:
                d, n = differing_pixels(outputs[0], other, task.query_valid)
                tally["differ"], tally["pixels"] = tally["differ"] + d, tally["pixels"] + n
            return outputs[0]

    @register_method("bcm-solvers")
    class Solvers(Method):
        def fit(self, task):
            fitted = []
            for solver in solvers:
                model = tally["models"].setdefault(solver, build_method("bcm", solver=solver))
                result, seconds = timed(lambda: model.fit(task))
                tally["fit"][solver] += seconds
                fitted.append(result)
            return Both(fitted)

    for shot in shots:
        tally.update(differ=0, pixels=0, fit={solver: 0.0 for solver in solvers}, models={})
        with tempfile.TemporaryDirectory() as folder:
            spec = RunSpec.create("bcm-solvers", "synthetic5i", 0, "practical", shot, runs=runs)
            execute([spec], ResultStore(folder))
        fits = " ".join(f"{solver} fit {seconds:.1f} s" for solver, seconds in tally["fit"].items())
        print(f"synthetic5i fold 0 {shot}-shot, {runs} run(s): {fits}; {tally['differ']} of {tally['pixels']} query "
              f"pixels ({100 * tally['differ'] / max(tally['pixels'], 1):.4f}%) decided differently", flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape (C=64, 27x27 features, 209x209 labels, "
                                                             "4 queries, DIaM 20 steps)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--feat", type=int, default=None)
    parser.add_argument("--label", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--diam-iterations", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--run-queries", type=int, default=1449, help="queries per run for the totals (PASCAL val)")
    parser.add_argument("--solvers", nargs="+", default=None, choices=["sklearn", "sklearnex"],
                        help="compare BCM's solvers instead of timing BCM against DIaM")
    parser.add_argument("--synthetic", action="store_true", help="with --solvers: on synthetic5i fold 0")
    parser.add_argument("--runs", type=int, default=1, help="with --synthetic: runs per shot")
    args = parser.parse_args()
    quick = dict(channels=64, feat=27, label=209, queries=4, diam_iterations=20)
    full = dict(channels=512, feat=53, label=417, queries=8, diam_iterations=100)
    shape = {key: getattr(args, key) if getattr(args, key) is not None else (quick if args.quick else full)[key]
             for key in full}

    from threadpoolctl import threadpool_limits

    from gfss_bench.methods import build_method

    torch.set_num_threads(args.threads)
    if not args.synthetic:
        print(f"shape: C={shape['channels']}, features {shape['feat']}x{shape['feat']}, labels "
              f"{shape['label']}x{shape['label']}, B+1=16, N=5, {shape['queries']} queries; threads={args.threads}; "
              f"DIaM {shape['diam_iterations']} steps; per-run totals for {args.run_queries} queries")
    header = (f"{'shots':>5} {'bcm fit/run s':>14} {'heads':>6} {'bcm predict/query s':>20} "
              f"{'diam adapt/query s':>19} {'diam/bcm per query':>19} {'run total bcm s':>16} {'run total diam s':>17}")
    import sklearn.linear_model, sklearn.metrics, sklearn.model_selection  # noqa: F401, E401  (imports not timed)

    if args.solvers:
        with threadpool_limits(limits=args.threads):
            build_method("bcm", c_grid_size=2).fit(build_task(16, 5, 1, 1, 8, 6, 23))  # first-call overheads
            for solver in args.solvers:
                build_method("bcm", c_grid_size=2, solver=solver).fit(build_task(16, 5, 1, 1, 8, 6, 23))
            if args.synthetic:
                synthetic_comparison(args.solvers, args.shots, args.runs)
                return
            for shots in args.shots:
                task = build_task(16, 5, shots, shape["queries"], shape["channels"], shape["feat"], shape["label"])
                print(f"{shots}-shot: {compare_solvers(task, args.solvers)}", flush=True)
        return
    print(header)
    with threadpool_limits(limits=args.threads):
        warm = build_task(16, 5, 1, 1, 8, 6, 23)  # first-call overheads, not timed
        build_method("bcm", c_grid_size=2).fit(warm).predict(warm)
        build_method("diam", iterations=1).predict(warm)
        for shots in args.shots:
            task = build_task(16, 5, shots, shape["queries"], shape["channels"], shape["feat"], shape["label"])
            bcm = build_method("bcm")
            fitted, fit_s = timed(lambda: bcm.fit(task))
            _, predict_s = timed(lambda: fitted.predict(task))
            diam = build_method("diam", iterations=shape["diam_iterations"])
            _, diam_s = timed(lambda: diam.predict(task))
            q = shape["queries"]
            heads = sum(len(e.heads) for e in fitted.entries)
            bcm_q, diam_q = predict_s / q, diam_s / q
            print(f"{shots:>5} {fit_s:>14.2f} {heads:>6} {bcm_q:>20.4f} {diam_q:>19.4f} {diam_q / bcm_q:>19.1f} "
                  f"{fit_s + args.run_queries * bcm_q:>16.1f} {args.run_queries * diam_q:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
