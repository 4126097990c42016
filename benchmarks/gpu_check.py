"""Run every CUDA path of gfss-bench once against the CPU, and measure it against the official structure.

    python benchmarks/gpu_check.py --device cuda --out results/         # on a GPU machine (about 8 minutes)
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc   # the same code paths at tiny sizes

Correctness checks (each passes or fails; the exit code is 1 when one fails or crashes):
  diam_probabilities  DIaM on one PASCAL-shaped task, device vs CPU: max |dp| <= 1e-4 with TF32 off (TF32 on reported)
  bcm_decisions       BCM fitted and applied on the device vs the CPU: >= 99.9% of the valid pixels decide alike
  pspnet_autocast     PSPNet-ResNet50 features under fp16 / bf16 autocast vs fp32: largest relative difference
  synthetic_run       `gfss-bench run -b synthetic5i --device DEV` vs `--device cpu`: confusion agreement >= 99.9%
  torchrun            `torchrun --nproc-per-node 1` (NCCL on CUDA, gloo on CPU) vs one process (and 2 with 2+ GPUs)
  train_amp           PSPNet-ResNet50 training (random init, AMP on CUDA) on synthetic data: the loss falls and the
                      checkpoint loads back with the same features
Measurements (figures and whether the issue's goal is met; they fail only when they crash):
  diam_speed          DIaM s/step and peak memory vs the autograd reference of benchmarks/diam_speed.py, at PASCAL
                      1-shot with 200 queries and COCO 5-shot with 50 (goal: >= 3x faster, <= 1/4 memory at COCO)
  feature_speed       PSPNet-ResNet50 images/s at 417x417: fp32, fp16, bf16 and channels_last, compute alone, decoding
                      alone and the two together (the share of the time the device waits for the loader)
  end_to_end          a PASCAL-5i-sized evaluation (1449 synthetic 417x417 queries in a VOC-layout folder, fold 0,
                      DIaM 1-shot, 5 runs) with a random-weight PSPNet-ResNet50 checkpoint in DIaM's layout, through
                      `gfss-bench run`, vs the same work with the autograd reference as the method

"Confusion agreement" of two results: 1 - sum |C_a - C_b| / (2 * pixels) over their per-run confusion matrices,
the share of scored pixels that stay in the same (label, prediction) cell. `--quick` shrinks every size so that
`--device cpu --quick` runs in about a minute (tests/test_gpu_check.py). The figures go to one JSON file,
OUT/gpu-<date>.json (cpu-<date>-quick.json and the like for other settings), rewritten after every check. The data,
checkpoints and results it makes live in a temporary folder (removed at the end unless --keep-work);
GFSS_BENCH_CACHE (the synthetic data) is used when set, else a folder in there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # diam_speed (shapes, tasks) and tests.methods.diam_reference

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diam_speed  # noqa: E402

REFERENCE_METHOD = "diam-reference"
AGREEMENT = 0.999


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the checks use; `QUICK` keeps the code paths and shrinks the work."""

    channels: int = diam_speed.CHANNELS
    feat: int = diam_speed.FEAT
    label: int = diam_speed.LABEL
    diam_queries: int = 8
    diam_iterations: int = 100
    bcm_options: tuple = ()  # build_method("bcm", ...) options; () = the official settings
    psp_images: int = 2
    psp_size: int = 417
    run_args: tuple = ("-f", "0", "--runs", "5")
    train: tuple = (("steps", 20),)  # PSPNetTrainConfig fields (the rest: defaults)
    train_evaluate: bool = True
    speed_queries: tuple = (("pascal-1shot", 200), ("coco-5shot", 50))
    speed_steps: tuple = (2, 12)  # the s/step figure is (t(b) - min of 2 t(a)) / (b - a): setup cancels out
    reference_speed_steps: tuple = (1, 4)
    voc_val: int = 1449
    voc_train: int = 16
    voc_size: int = 417
    feature_images: int = 512
    feature_batch: int = 16
    e2e_runs: int = 5
    e2e_reference_runs: int = 1  # the reference's time for all runs is projected from these
    e2e_batch: int = 200
    e2e_extra: tuple = ()


QUICK = Sizes(channels=16, feat=7, label=33, diam_queries=3, diam_iterations=12,
              bcm_options=(("c_grid_size", 2), ("cv_folds", 2)), psp_images=1, psp_size=33,
              run_args=("-f", "0", "--runs", "1", "--queries", "12", "--feature-memory", "0", "--image-size", "49",
                        "-o", "diam.iterations=5", "-o", "finetune.iterations=5", "-o", "bcm.c_grid_size=2",
                        "-o", "bcm.cv_folds=2"),
              train=(("steps", 6), ("batch_size", 4), ("crop_size", 33), ("lr", 0.001)), train_evaluate=False,
              speed_queries=(("pascal-1shot", 4), ("coco-5shot", 2)), speed_steps=(1, 3), reference_speed_steps=(1, 3),
              voc_val=12, voc_train=4, voc_size=33, feature_images=4, feature_batch=2, e2e_runs=1,
              e2e_reference_runs=1, e2e_batch=16,
              e2e_extra=("--image-size", "33", "--min-support-pixels", "100", "-o", "iterations=20"))


# ----------------------------------------------------------------------------------------- helpers


class Context:
    """The device, the sizes, the work folder and the environment of the CLI subprocesses."""

    def __init__(self, device: str, quick: bool, work: Path, threads: int):
        self.device, self.quick, self.work, self.threads = torch.device(device), quick, work, threads
        self.sizes = QUICK if quick else Sizes()
        cache = os.environ.get("GFSS_BENCH_CACHE") or str(work / "cache")
        self.env = {**os.environ, "GFSS_BENCH_CACHE": cache, "OMP_NUM_THREADS": str(threads),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self._voc: Optional[Path] = None
        self._checkpoint: Optional[Path] = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def subprocess(self, command: list[str], what: str) -> float:
        """Run a command with the check's environment; its wall seconds. A failure raises with its stderr tail."""
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n"
                               f"{(done.stderr or done.stdout)[-3000:]}")
        return time.perf_counter() - started

    def cli(self, args: list[str], what: str, reference: bool = False) -> float:
        """`python -m gfss_bench ARGS` (with the reference method registered first when `reference`)."""
        entry = [__file__, "--cli"] if reference else ["-m", "gfss_bench"]
        return self.subprocess([sys.executable, *entry, *map(str, args)], what)

    def voc_root(self) -> Path:
        """A VOC-layout folder of synthetic images (made once): PASCAL-5i fold 0 has support candidates."""
        if self._voc is None:
            self._voc = make_voc_folder(self.work / "voc", self.sizes)
        return self._voc

    def checkpoint(self) -> Path:
        """A random-weight PSPNet-ResNet50 for PASCAL-5i fold 0 (16 outputs) in DIaM's layout (made once)."""
        if self._checkpoint is None:
            from gfss_bench.models.pspnet import PSPNetResNet50

            torch.manual_seed(0)
            state = PSPNetResNet50(16).state_dict()
            self._checkpoint = self.work / "random-pspnet-resnet50.pth"
            torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, self._checkpoint)
        return self._checkpoint


def make_voc_folder(root: Path, sizes: Sizes) -> Path:
    """JPEGImages/, SegmentationClassAug/, train.txt and val.txt. Image i holds a large block of class 1 + i % 20
    (16% of the image: 27889 pixels at 417x417, above the 16384 support minimum) and a smaller one of a base class
    of fold 0 (6..20), so no image holds two novel classes of fold 0; colours follow the class, plus noise."""
    from PIL import Image

    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    size = sizes.voc_size
    big, small = int(size * 0.4), int(size * 0.2)
    lines = {"val": [], "train": []}
    for split, count in (("val", sizes.voc_val), ("train", sizes.voc_train)):
        for i in range(count):
            stem = f"{split}_{i:05d}"
            image = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
            label = np.zeros((size, size), np.uint8)
            for cls, side in ((1 + i % 20, big), (6 + (7 * i) % 15, small)):
                top, left = rng.integers(0, size - side, 2)
                label[top:top + side, left:left + side] = cls
                image[top:top + side, left:left + side] = (37 * cls % 256, 91 * cls % 256, 53 * cls % 256)
            label[0] = 255  # a void row, as on object borders
            Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
            Image.fromarray(label).save(root / "SegmentationClassAug" / f"{stem}.png")
            lines[split].append(f"JPEGImages/{stem}.jpg SegmentationClassAug/{stem}.png")
    for split, listed in lines.items():
        (root / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return root


def task_on(task, device: torch.device):
    """The task with every tensor on `device`."""
    return dataclasses.replace(task, **{f.name: getattr(task, f.name).to(device) for f in dataclasses.fields(task)
                                        if isinstance(getattr(task, f.name), torch.Tensor)})


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls and cuDNN convolutions on or off inside the block (no effect on the CPU)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference|."""
    value, reference = value.float().cpu(), reference.float().cpu()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def stored_confusions(folder: Path) -> dict[str, dict]:
    """Label of each stored result (method + options, fold, shot) -> its per-run confusion matrices and scores."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if "runs" not in record or "run_id" not in record or path.name.endswith(".partial.json"):
            continue
        spec = record["spec"]
        label = f"{spec['method']}{json.dumps(spec['method_options'], sort_keys=True)} fold {spec['fold']} " \
                f"{spec['shot']}-shot"
        out[label] = {"confusions": [np.asarray(r["confusion"], dtype=np.int64) for r in record["runs"]],
                      "scores": [r["scores"] for r in record["runs"]], "provenance": record["provenance"],
                      "num_queries": [r["num_queries"] for r in record["runs"]]}
    return out


def confusion_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """1 - sum |A - B| / (2 * pixels): see the module docstring."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return 0.0
    moved = sum(int(np.abs(x - y).sum()) for x, y in zip(a, b)) / 2
    return 1.0 - moved / max(1, sum(int(x.sum()) for x in a))


def compare_results(a: Path, b: Path) -> dict:
    """Per result label: confusion agreement, bit-identical or not, largest mIoU difference (points)."""
    left, right = stored_confusions(a), stored_confusions(b)
    if not left or set(left) != set(right):
        raise RuntimeError(f"the results in {a} and {b} are not the same specs: {sorted(left)} vs {sorted(right)}")
    out = {}
    for label in sorted(left):
        x, y = left[label], right[label]
        miou = max((abs(p[k] - q[k]) * 100 for p, q in zip(x["scores"], y["scores"]) for k in ("base", "novel")
                    if not (math.isnan(p[k]) or math.isnan(q[k]))), default=0.0)
        out[label] = {"agreement": confusion_agreement(x["confusions"], y["confusions"]),
                      "identical": all(np.array_equal(p, q) for p, q in zip(x["confusions"], y["confusions"])),
                      "max_miou_difference_points": miou}
    return out


class _PeakMemory:
    """Peak memory growth of a block: CUDA allocator peak on the GPU, resident-set peak on the CPU (VmHWM after
    resetting it; where it cannot be reset, ru_maxrss growth, a lower bound), as in benchmarks/diam_speed.py."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, float("nan")

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            self._before = diam_speed._status_kib("VmRSS")
            self._reset = diam_speed._reset_peak() and self._before is not None
            self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self._before) / 2 ** 20
        elif self._reset:
            self.mib = (diam_speed._status_kib("VmHWM") - self._before) / 1024
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss) / 1024


# ----------------------------------------------------------------------------------------- correctness


def check_diam_probabilities(ctx: Context) -> dict:
    from gfss_bench.methods import build_method

    s = ctx.sizes
    task = diam_speed.build_task("pascal-1shot", queries=s.diam_queries, channels=s.channels, feat=s.feat,
                                 label=s.label)
    method = build_method("diam", iterations=s.diam_iterations)
    reference = method.predict(task)
    figures = {"queries": s.diam_queries, "iterations": s.diam_iterations}
    for name, enabled in (("tf32_off", False), ("tf32_on", True)):
        with tf32(enabled):
            probs = method.predict(task_on(task, ctx.device)).cpu()
        figures[f"max_abs_difference_{name}"] = float((probs - reference).abs().max())
        figures[f"argmax_agreement_{name}"] = float((probs.argmax(1) == reference.argmax(1)).float().mean())
        figures[f"finite_{name}"] = bool(torch.isfinite(probs).all())
    passed = figures["max_abs_difference_tf32_off"] <= 1e-4 and figures["finite_tf32_off"]
    return {"passed": passed, "criterion": "max |p_device - p_cpu| <= 1e-4 with TF32 off", "figures": figures}


def check_bcm_decisions(ctx: Context) -> dict:
    from gfss_bench.methods import build_method

    s = ctx.sizes
    task = diam_speed.build_task("pascal-1shot", queries=s.diam_queries, channels=s.channels, feat=s.feat,
                                 label=s.label)
    fitted = {}
    decisions = {}
    for name, device in (("cpu", torch.device("cpu")), ("device", ctx.device)):
        on_device = task_on(task, device)
        # a fresh object per device: one object's down-sampling stream continues across its fits (one evaluation)
        fitted[name] = build_method("bcm", **dict(s.bcm_options)).fit(on_device)
        decisions[name] = fitted[name].predict(on_device).argmax(1).cpu()
    valid = task.query_valid
    agreement = float((decisions["cpu"] == decisions["device"])[valid].float().mean())
    heads_equal = all(np.array_equal(a.coef, b.coef) for x, y in zip(fitted["cpu"].entries, fitted["device"].entries)
                      for a, b in zip(x.heads, y.heads))
    figures = {"pixel_agreement": agreement, "mapping_tables_equal": fitted["cpu"].table == fitted["device"].table,
               "heads_equal": heads_equal, "valid_pixels": int(valid.sum()), "mapping_table":
               {str(k): list(v) for k, v in fitted["cpu"].table.items()}}
    return {"passed": agreement >= AGREEMENT, "criterion": f"decisions agree in >= {AGREEMENT:.1%} of valid pixels",
            "figures": figures}


def check_pspnet_autocast(ctx: Context) -> dict:
    from gfss_bench.models.pspnet import PSPNetResNet50

    s = ctx.sizes
    torch.manual_seed(0)
    model = PSPNetResNet50(16).eval()
    images = torch.randn(s.psp_images, 3, s.psp_size, s.psp_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model.extract_features(images)
        model.to(ctx.device)
        x = images.to(ctx.device)
        with tf32(False):
            fp32 = model.extract_features(x).float()
        fp32_default = model.extract_features(x).float()  # torch's defaults (cuDNN convolutions may use TF32)
        figures = {"images": s.psp_images, "size": s.psp_size,
                   "fp32_device_vs_cpu": relative_difference(fp32, cpu),
                   "fp32_default_tf32_vs_fp32": relative_difference(fp32_default, fp32)}
        limits = {"fp16": 1e-2, "bf16": 5e-2}
        passed = figures["fp32_device_vs_cpu"] <= 1e-3
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                with torch.autocast(ctx.device.type, dtype=dtype):
                    reduced = model.extract_features(x)
            except RuntimeError as error:  # e.g. a dtype the CPU's autocast does not support
                if ctx.cuda:
                    raise
                figures[f"{name}_vs_fp32"] = f"unsupported on cpu: {error}"
                continue
            figures[f"{name}_vs_fp32"] = relative_difference(reduced, fp32)
            passed = passed and figures[f"{name}_vs_fp32"] <= limits[name]
    criterion = ("relative difference (max |x - ref| / max |ref|) vs fp32 without TF32: fp32 on the device vs the "
                 f"CPU <= 1e-3, fp16 <= {limits['fp16']}, bf16 <= {limits['bf16']}")
    return {"passed": passed, "criterion": criterion, "figures": figures}


def _synthetic_args(ctx: Context) -> list[str]:
    return ["run", "-b", "synthetic5i", "-m", "base", "-m", "imprint", "-m", "finetune", "-m", "diam", "-m", "bcm",
            *ctx.sizes.run_args]


def check_synthetic_run(ctx: Context) -> dict:
    args, work, device = _synthetic_args(ctx), ctx.work, ctx.device.type
    figures = {"args": args[1:], "seconds": {}}
    figures["seconds"]["cpu"] = ctx.cli(args + ["--device", "cpu", "--results-dir", work / "run-cpu"], "cpu run")
    figures["seconds"]["device_fp32"] = ctx.cli(
        args + ["--device", device, "--feature-precision", "fp32", "--results-dir", work / "run-device-fp32"],
        "device run (fp32 features)")
    figures["fp32_features"] = compare_results(work / "run-cpu", work / "run-device-fp32")
    if ctx.cuda:  # fp16 autocast, the faster opt-in on CUDA
        figures["seconds"]["device_fp16"] = ctx.cli(
            args + ["--device", device, "--feature-precision", "fp16", "--results-dir", work / "run-device"],
            "device run (fp16 features)")
        figures["fp16_features"] = compare_results(work / "run-cpu", work / "run-device")
    worst = min(r["agreement"] for r in figures["fp32_features"].values())
    figures["min_agreement_fp32_features"] = worst
    return {"passed": worst >= AGREEMENT, "criterion": f"confusion agreement >= {AGREEMENT:.1%} for every method, "
            "with fp32 features on both sides (fp16 features on CUDA are reported)", "figures": figures}


def check_torchrun(ctx: Context) -> dict:
    """Needs the `--device DEV --feature-precision fp32` results of check_synthetic_run (same arguments)."""
    args, work, device = _synthetic_args(ctx), ctx.work, ctx.device.type
    single = work / "run-device-fp32"
    if not stored_confusions(single):
        ctx.cli(args + ["--device", device, "--feature-precision", "fp32", "--results-dir", single], "one process")
    counts = [1] + ([2] if ctx.cuda and torch.cuda.device_count() >= 2 else [])
    figures = {"backend": "nccl" if ctx.cuda else "gloo", "gpus": torch.cuda.device_count() if ctx.cuda else 0}
    passed = True
    for n in counts:
        folder = work / f"torchrun-{n}"
        figures[f"seconds_{n}"] = ctx.subprocess(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m",
             "gfss_bench", *args, "--device", device, "--feature-precision", "fp32", "--results-dir", str(folder)],
            f"torchrun --nproc-per-node {n}")
        compared = compare_results(single, folder)
        world = {r["provenance"]["world_size"] for r in stored_confusions(folder).values()}
        figures[f"processes_{n}"] = {"world_size": sorted(world), "results": compared}
        passed = passed and world == {n} and all(r["agreement"] >= AGREEMENT for r in compared.values())
    return {"passed": passed, "criterion": f"results of torchrun with 1 (and 2 with 2+ GPUs) processes agree with one "
            f"process in >= {AGREEMENT:.1%} of pixels (identical: bit for bit)", "figures": figures}


def check_train_amp(ctx: Context) -> dict:
    from gfss_bench.models import load_segmenter
    from gfss_bench.models.pspnet_training import PSPNetTrainConfig, train_pspnet

    config = PSPNetTrainConfig(**dict(ctx.sizes.train))
    losses: dict[int, float] = {}
    workers = min(6, os.cpu_count() or 1) if ctx.cuda else 0  # the CLI's defaults
    os.environ["GFSS_BENCH_CACHE"] = ctx.env["GFSS_BENCH_CACHE"]
    model, info = train_pspnet("synthetic5i", 0, "practical", backbone_weights=None, out=ctx.work / "train",
                               config=config, device=str(ctx.device), workers=workers, amp=None,
                               evaluate=ctx.sizes.train_evaluate, force=True, log=lambda message: None,
                               on_step=lambda step, loss: losses.__setitem__(step, loss))
    values = [losses[k] for k in sorted(losses)]
    third = max(1, len(values) // 3)
    first, last = float(np.mean(values[:third])), float(np.mean(values[-third:]))
    loaded = load_segmenter(info["path"], expected_outputs=16, device=str(ctx.device))
    size = config.crop_size or 97
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2)).to(ctx.device)
    with torch.no_grad(), tf32(False):
        difference = relative_difference(loaded.extract_features(images), model.extract_features(images))
    figures = {"amp": info["amp"], "steps": len(values), "losses": values, "first_third_mean": first,
               "last_third_mean": last, "reload_relative_difference": difference,
               "val_base_miou": info.get("val_base_miou"), "train_seconds": info["train_seconds"]}
    passed = bool(info["amp"] == ctx.cuda and all(map(math.isfinite, values)) and last < first and difference <= 1e-5)
    return {"passed": passed, "criterion": "AMP on by default on CUDA; mean loss of the last third of the steps < that "
            "of the first third; the saved checkpoint gives the trained model's features (relative difference <= "
            "1e-5)", "figures": figures}


# ----------------------------------------------------------------------------------------- measurements


def _timed_diam(ctx: Context, implementation: str, task, steps: int) -> tuple[float, float]:
    """(seconds, peak memory growth in MiB) of one DIaM adaptation of `steps` steps."""
    from gfss_bench.methods import build_method
    from tests.methods.diam_reference import reference_diam

    with _PeakMemory(ctx.device) as memory:
        ctx.sync()
        started = time.perf_counter()
        if implementation == "reference":
            reference_diam(task, iterations=steps)
        else:
            build_method("diam", iterations=steps).predict(task)
        ctx.sync()
        seconds = time.perf_counter() - started
    return seconds, memory.mib


def measure_diam_speed(ctx: Context) -> dict:
    s = ctx.sizes
    figures = {}
    for shape, queries in s.speed_queries:
        task = task_on(diam_speed.build_task(shape, queries=queries, channels=s.channels, feat=s.feat, label=s.label),
                       ctx.device)
        row = {"queries": queries}
        for implementation, (a, b) in (("reference", s.reference_speed_steps), ("gfss_bench", s.speed_steps)):
            try:
                _timed_diam(ctx, implementation, task, 1)  # warm-up (kernels, allocator)
                short = min(_timed_diam(ctx, implementation, task, a)[0] for _ in range(2))
                long, memory = _timed_diam(ctx, implementation, task, b)
                per_step = (long - short) / (b - a)
                row[implementation] = {"seconds_per_step": per_step if per_step > 0 else long / b,
                                       "setup_included": per_step <= 0,  # timing noise above the step time
                                       "peak_memory_mib": memory, "steps": [a, b]}
            except torch.cuda.OutOfMemoryError as error:
                row[implementation] = {"out_of_memory": str(error).splitlines()[0]}
            if ctx.cuda:
                torch.cuda.empty_cache()
        ref, ours = row["reference"], row["gfss_bench"]
        if "seconds_per_step" in ref and "seconds_per_step" in ours:
            row["speedup"] = ref["seconds_per_step"] / max(ours["seconds_per_step"], 1e-12)
            row["memory_ratio"] = ours["peak_memory_mib"] / max(ref["peak_memory_mib"], 1e-9)
        figures[shape] = row
        del task
    pascal, coco = figures["pascal-1shot"], figures["coco-5shot"]
    reference_oom = "out_of_memory" in coco["reference"]
    met = (reference_oom or (coco.get("speedup", 0) >= 3 and coco.get("memory_ratio", 1) <= 0.25)) and \
        pascal.get("speedup", 0) >= 3
    return {"goal": ">= 3x faster per step at both shapes, <= 1/4 of the reference's peak memory at COCO 5-shot "
            "(a reference out of memory counts as met there)", "goal_met": bool(met), "figures": figures}


class _DecodeOnly(torch.nn.Module):
    """A stand-in segmenter that does no work, to time decoding, preprocessing and the host-to-device copy alone;
    it keeps the first batch it is given (exactly what the Extractor feeds a segmenter)."""

    first: Optional[torch.Tensor] = None

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            self.first = images
        return images[:, :1, ::8, ::8]


def measure_feature_speed(ctx: Context) -> dict:
    from gfss_bench.data.datasets import open_split
    from gfss_bench.models.features import Extractor, FeatureConfig, chunked
    from gfss_bench.models.pspnet import PSPNetResNet50
    from gfss_bench.protocols import get_benchmark

    s = ctx.sizes
    split = open_split(get_benchmark("pascal5i"), "val", ctx.voc_root())
    count = min(s.feature_images, len(split))
    batches = chunked(list(range(count)), s.feature_batch)
    workers = FeatureConfig().workers_for(ctx.device)
    torch.manual_seed(0)
    model = PSPNetResNet50(16).eval().to(ctx.device)
    repeats = max(1, count // s.feature_batch)

    def compute_only(precision: str, layout: str) -> float:
        """Images/s on a resident batch, as the Extractor feeds it or with the model and batch in channels_last."""
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = model.to(memory_format=memory_format)
        x = resident.contiguous(memory_format=memory_format) if layout == "channels_last" else resident
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        with torch.no_grad(), torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            net.extract_features(x)  # warm-up
            ctx.sync()
            started = time.perf_counter()
            for _ in range(repeats):
                net.extract_features(x)
            ctx.sync()
        return repeats * len(x) / (time.perf_counter() - started)

    def pipeline(segmenter, precision: str) -> float:
        extractor = Extractor(segmenter, split, s.voc_size, ctx.device, precision, workers)
        started = time.perf_counter()
        for features, _ in extractor.run(batches):
            pass
        ctx.sync()
        return count / (time.perf_counter() - started)

    decode = _DecodeOnly()
    figures = {"images": count, "batch": s.feature_batch, "size": s.voc_size, "loader_workers": workers,
               "compute_only_images_per_s": {}, "pipeline_images_per_s": {"decode_only": pipeline(decode, "fp32")}}
    resident = decode.first  # a batch as the Extractor feeds it, already on the device
    figures["input_dtype"] = str(resident.dtype)
    figures["input_is_channels_last"] = resident.is_contiguous(memory_format=torch.channels_last)
    variants = [("fp32", "fp32", "as_fed"), ("bf16", "bf16", "as_fed")]
    if ctx.cuda:  # fp16 and layouts are CUDA questions (fp16 on the CPU is a slow emulation)
        variants += [("fp16", "fp16", "as_fed"), ("fp16_channels_last", "fp16", "channels_last")]
    for name, precision, layout in variants:
        figures["compute_only_images_per_s"][name] = compute_only(precision, layout)
    model.to(memory_format=torch.contiguous_format)
    fastest = "fp16" if ctx.cuda else "fp32"
    figures["pipeline_precision"] = fastest
    figures["pipeline_images_per_s"][fastest] = pipeline(model, fastest)
    if ctx.cuda:
        figures["pipeline_images_per_s"]["fp16_channels_last_model"] = pipeline(  # the batch stays as fed
            model.to(memory_format=torch.channels_last), "fp16")
        model.to(memory_format=torch.contiguous_format)
        try:
            figures["gpu_utilization_percent_after"] = torch.cuda.utilization()
        except Exception as error:  # noqa: BLE001 - needs pynvml, often missing
            figures["gpu_utilization_percent_after"] = f"unavailable: {type(error).__name__}"
    compute = figures["compute_only_images_per_s"][fastest]
    together = figures["pipeline_images_per_s"][fastest]
    figures["loader_wait_fraction"] = max(0.0, 1.0 - together / compute)  # share of the pipeline's time not computing
    return {"goal": "the device is busy, not waiting on decoding: loader_wait_fraction = 1 - pipeline / compute-only "
            "images/s at the pipeline precision (fp16 on CUDA) is small", "goal_met": figures["loader_wait_fraction"] <= 0.2,
            "figures": figures}


def measure_end_to_end(ctx: Context) -> dict:
    s = ctx.sizes
    root, checkpoint = ctx.voc_root(), ctx.checkpoint()
    args = ["run", "-b", "pascal5i", "-f", "0", "-k", "1", "--data-root", root, "--checkpoint", checkpoint,
            "--device", ctx.device.type, "--batch-size", s.e2e_batch, *s.e2e_extra]
    figures = {"queries_per_run": None, "runs": s.e2e_runs, "batch_size": s.e2e_batch, "images": s.voc_val}
    sides = {}
    for side, method, runs in (("gfss_bench", "diam", s.e2e_runs), ("reference", REFERENCE_METHOD, s.e2e_reference_runs)):
        folder = ctx.work / f"e2e-{side}"
        wall = ctx.cli(args + ["-m", method, "--runs", runs, "--results-dir", folder], f"end-to-end {side}",
                       reference=side == "reference")
        (result,) = stored_confusions(folder).values()
        provenance = result["provenance"]
        sides[side] = result
        figures[side] = {"runs": runs, "process_seconds": wall, "shared_setup_s": provenance["shared_setup_s"],
                         "method_s_per_run": provenance["method_time_s"] / runs,
                         "wall_s": provenance["wall_time_s"] + provenance["shared_setup_s"]}
        figures["queries_per_run"] = result["num_queries"][0]
    ours, ref = figures["gfss_bench"], figures["reference"]
    ref["projected_wall_s_for_all_runs"] = ref["shared_setup_s"] + ref["method_s_per_run"] * s.e2e_runs
    figures["method_speedup"] = ref["method_s_per_run"] / max(ours["method_s_per_run"], 1e-12)
    figures["wall_speedup"] = ref["projected_wall_s_for_all_runs"] / max(ours["wall_s"], 1e-12)
    figures["run0_agreement_with_reference"] = confusion_agreement(sides["gfss_bench"]["confusions"][:1],
                                                                   sides["reference"]["confusions"][:1])
    return {"goal": "the whole evaluation faster than the same work through the autograd reference (its time for "
            f"{s.e2e_runs} runs projected from {s.e2e_reference_runs})", "goal_met": figures["wall_speedup"] > 1,
            "figures": figures}


CHECKS: dict[str, tuple[str, Callable[[Context], dict]]] = {
    "diam_probabilities": ("check", check_diam_probabilities),
    "bcm_decisions": ("check", check_bcm_decisions),
    "pspnet_autocast": ("check", check_pspnet_autocast),
    "synthetic_run": ("check", check_synthetic_run),
    "torchrun": ("check", check_torchrun),
    "train_amp": ("check", check_train_amp),
    "diam_speed": ("measurement", measure_diam_speed),
    "feature_speed": ("measurement", measure_feature_speed),
    "end_to_end": ("measurement", measure_end_to_end),
}


# ----------------------------------------------------------------------------------------- main


def register_reference_method() -> None:
    """`diam-reference`: the autograd reference (tests/methods/diam_reference.py) as a gfss-bench method, with
    DIaM's official settings, so that the runner can evaluate it like `diam`."""
    from gfss_bench.methods import Method, register_method
    from tests.methods.diam_reference import reference_diam

    @register_method(REFERENCE_METHOD)
    class DIaMReference(Method):
        iterations: int = 100

        def predict(self, task):
            with torch.enable_grad():
                return reference_diam(task, iterations=self.iterations).detach()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished subprocesses."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def environment(ctx: Context) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"device": ctx.device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": ctx.threads,
            "host": platform.node(), "git_commit": commit, "quick": ctx.quick, "sizes": dataclasses.asdict(ctx.sizes)}
    if ctx.cuda:
        info["gpu"] = torch.cuda.get_device_name(ctx.device)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(ctx.device).total_memory / 2 ** 30
    return info


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the same code paths in about a minute")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--only", action="append", choices=sorted(CHECKS), help="run only this check (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (data, results) for a look")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out DIR is required when $OUT is not set")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gfss-gpu-check-"))  # data, checkpoints, results: not sent back with OUT
    try:
        return _run_checks(args, out, Context(args.device, args.quick, work, args.threads))
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run_checks(args, out: Path, ctx: Context) -> int:
    started = datetime.now(timezone.utc)
    report = {"script": "benchmarks/gpu_check.py", "created": started.isoformat(timespec="seconds"),
              "command": sys.argv, "environment": environment(ctx), "entries": {}}
    name = f"{'gpu' if ctx.cuda else 'cpu'}-{started:%Y-%m-%d}{'-quick' if args.quick else ''}.json"
    path = out / name
    for check, (kind, function) in CHECKS.items():
        if args.only and check not in args.only:
            continue
        print(f"{check} ...", flush=True)
        clock, cpu = time.perf_counter(), _cpu_seconds()
        try:
            entry = function(ctx)
            if kind == "measurement":
                entry = {"passed": True, **entry}
        except Exception as error:  # noqa: BLE001 - one broken path must not hide the others' figures
            entry = {"passed": False, "error": f"{type(error).__name__}: {error}",
                     "traceback": traceback.format_exc()[-4000:]}
        entry = {"kind": kind, **entry, "seconds": time.perf_counter() - clock, "cpu_seconds": _cpu_seconds() - cpu}
        report["entries"][check] = entry
        goal = f", goal met: {entry['goal_met']}" if "goal_met" in entry else ""
        print(f"{check}: {'passed' if entry['passed'] else 'FAILED'}{goal} ({entry['seconds']:.1f} s)"
              + (f"\n{entry['error']}" if "error" in entry else ""), flush=True)
        report["passed"] = all(e["passed"] for e in report["entries"].values())
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
        os.replace(tmp, path)  # written after every check, atomically: a killed run keeps what it measured
    print(f"wrote {path}")
    return 0 if report.get("passed", True) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:  # `gfss-bench ...` with the reference method registered (end_to_end)
        register_reference_method()
        from gfss_bench.cli import main as cli_main

        sys.argv = ["gfss-bench", *sys.argv[2:]]
        cli_main()
    else:
        sys.exit(main())
