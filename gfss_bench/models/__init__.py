"""Base segmenters: the interface, a small PSPNet for the synthetic benchmarks, training and the zoo."""

from gfss_bench.models.segmenter import Segmenter
from gfss_bench.models.small_pspnet import SmallPSPNet, SmallPSPNetConfig, build_small_pspnet

__all__ = ["Segmenter", "SmallPSPNet", "SmallPSPNetConfig", "build_small_pspnet", "build_segmenter", "builtin_segmenter",
           "load_segmenter"]


def builtin_segmenter(benchmark_name: str, fold: int, protocol_name: str, device="cpu", progress: bool = True):
    """The built-in base segmenter of a synthetic benchmark (see gfss_bench.models.zoo)."""
    from gfss_bench.models.zoo import builtin_segmenter as _builtin

    return _builtin(benchmark_name, fold, protocol_name, device=device, progress=progress)


def load_segmenter(path, expected_outputs=None, device="cpu"):
    """A base segmenter from a checkpoint file: DIaM's or BAM's PSPNet-ResNet50 (with or without the
    `module.` prefix) or a file written by `gfss-bench train` (see gfss_bench.models.checkpoints)."""
    from gfss_bench.models.checkpoints import load_checkpoint_segmenter

    return load_checkpoint_segmenter(path, expected_outputs=expected_outputs, device=device)


def build_segmenter(reference: str, benchmark: str, fold: int, device="cpu", protocol: str = "standard") -> Segmenter:
    """The segmenter of a `--segmenter FAMILY:REF` reference for one benchmark fold, e.g. `hf:DIR`, `smp:DIR` or
    `module:FILE.py:FUNCTION#HEAD` (see gfss_bench.models.families)."""
    from gfss_bench.models.families import build_segmenter as _build

    return _build(reference, benchmark, fold, device=device, protocol=protocol)
