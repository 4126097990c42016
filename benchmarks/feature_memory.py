"""Peak host memory of the two in-process feature sources: held in RAM vs. streamed batch by batch.

    python benchmarks/feature_memory.py [--images 250 1000] [--size 417] [--channels 512]

Each (source, number of images) is measured in a fresh subprocess: the peak resident set size (ru_maxrss)
while every image's features are produced and consumed batch by batch, minus the process's size before the
first batch. Images are the synthetic val images (repeated to reach the count) at the real benchmarks' 417x417;
the segmenter is a single strided conv with PSPNet's output (512 x 53 x 53 float32 = 5.8 MB per image), so
the figures isolate the feature storage. Printed as ratios measured in this run: streamed / in-memory peak
growth, and how each grows with the number of images (COCO-20i scores 10000 queries per run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def child(source: str, images: int, size: int, channels: int) -> dict:
    import torch

    from gfss_bench.data.datasets import SegmentationList
    from gfss_bench.models.features import Extractor, StoredFeatures, StreamedFeatures, chunked
    from gfss_bench.data.synthetic import ensure_synthetic_dataset

    torch.set_num_threads(1)
    root = ensure_synthetic_dataset()
    lines = (root / "val.txt").read_text().splitlines()
    with tempfile.TemporaryDirectory() as folder:
        list_file = Path(folder) / "list.txt"
        list_file.write_text("\n".join(lines[i % len(lines)] for i in range(images)) + "\n")
        split = SegmentationList(root, list_file)
        conv = torch.nn.Conv2d(3, channels, 9, stride=8, padding=4).eval()
        segmenter = type("Conv", (), {"extract_features": staticmethod(lambda x: torch.relu(conv(x)))})()
        extractor = Extractor(segmenter, split, size, torch.device("cpu"))
        batches = chunked(list(range(images)), 16)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if source == "memory":
            features = StoredFeatures(extractor, range(images))
            features.fill(range(len(features.chunks)))
        else:
            features = StreamedFeatures(extractor)
        checksum = 0.0
        for batch_features, _ in features.batches(batches):
            checksum += float(batch_features.mean())  # consume every batch, as the runner does
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"growth_mib": (peak - before) / 1024, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--size", type=int, default=417)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.size, args.channels)))
        return
    growth = {}
    for images in args.images:
        for source in ("memory", "streamed"):
            out = subprocess.run([sys.executable, __file__, "--child", source, str(images), "--size", str(args.size),
                                  "--channels", str(args.channels)], capture_output=True, text=True, check=True)
            growth[source, images] = json.loads(out.stdout.splitlines()[-1])["growth_mib"]
            print(f"{source:8s} {images:6d} images: peak RSS growth {growth[source, images]:8.0f} MiB")
    for images in args.images:
        print(f"{images} images: streamed / in-memory peak growth = "
              f"{growth['streamed', images] / growth['memory', images]:.3f}")
    small, large = min(args.images), max(args.images)
    for source in ("memory", "streamed"):
        print(f"{source}: growth at {large} / at {small} images = "
              f"{growth[source, large] / max(growth[source, small], 1):.2f} (images ratio {large / small:.1f})")


if __name__ == "__main__":
    main()
