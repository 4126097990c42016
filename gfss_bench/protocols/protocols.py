"""The standard (CAPL-style) and practical (DIaM) GFSS protocols as data (docs/protocol.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from gfss_bench.protocols.catalog import Benchmark
from gfss_bench.registry import Registry


@dataclass(frozen=True)
class Protocol:
    """How base training data and support masks are built from the full annotations."""

    name: str
    description: str
    drop_training_images_with_novel: bool  # standard: True; practical: novel pixels become background
    base_labels_in_supports: bool  # standard: True; practical: base pixels become background

    def keeps_training_image(self, present_classes: Iterable[int], novel_classes: Iterable[int]) -> bool:
        """Whether a training image (its original class ids) is used for base training."""
        return not (self.drop_training_images_with_novel and set(present_classes) & set(novel_classes))

    def training_label_lut(self, benchmark: Benchmark, fold: int) -> np.ndarray:
        """Original label -> base-training label: background 0, base 1..B, novel -> 0, void 255."""
        lut = benchmark.episode_label_lut(fold).copy()
        num_base = len(benchmark.base_classes(fold))
        for original in benchmark.novel_classes(fold):
            lut[original] = 0
        assert lut[lut != 255].max(initial=0) <= num_base
        return lut

    def support_label_lut(self, benchmark: Benchmark, fold: int) -> np.ndarray:
        """Original label -> support-mask label in the episode space (novel B+j; base per protocol)."""
        lut = benchmark.episode_label_lut(fold).copy()
        if not self.base_labels_in_supports:
            for original in benchmark.base_classes(fold):
                lut[original] = 0
        return lut


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.add("standard", Protocol(
    "standard",
    "CAPL-style: training images containing novel classes are removed from base training; "
    "support masks keep their base-class labels",
    drop_training_images_with_novel=True, base_labels_in_supports=True))
PROTOCOLS.add("practical", Protocol(
    "practical",
    "DIaM's fully practical setting: training images with novel objects are kept with those pixels "
    "labelled background; support masks annotate only the novel class (base pixels are background)",
    drop_training_images_with_novel=False, base_labels_in_supports=False))


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)
