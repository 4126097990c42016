"""Feature extraction with a frozen segmenter: each image of a split once, reused by every run and method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from gfss_bench.benchmark.transforms import resize_and_pad
from gfss_bench.progress import progress_bar


class _PreparedImages(Dataset):
    """Images resized/padded to the evaluation size, with their original-id labels (uint8, 255 padding)."""

    def __init__(self, split, indices: Sequence[int], image_size: int):
        self.split, self.indices, self.image_size = split, list(indices), image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        image, label = resize_and_pad(*self.split.load(index), self.image_size)
        return image, label.to(torch.uint8)


@dataclass
class SplitFeatures:
    """Features [n, C, h, w] and labels [n, S, S] (original class ids) of selected split images."""

    features: torch.Tensor
    labels: torch.Tensor
    rows: dict[int, int]  # split index -> row

    def select(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([self.rows[i] for i in indices], dtype=torch.long)
        return self.features[rows], self.labels[rows]


@torch.no_grad()
def extract_features(segmenter, split, indices: Sequence[int], image_size: int, device: torch.device,
                     batch_size: int = 16, description: str = "features") -> SplitFeatures:
    """Run the frozen segmenter's feature extractor over `indices` of `split`; results stay on CPU."""
    loader = DataLoader(_PreparedImages(split, indices, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=0, pin_memory=device.type == "cuda")
    features, labels = [], []
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(indices))
        for images, batch_labels in loader:
            features.append(segmenter.extract_features(images.to(device, non_blocking=True)).float().cpu())
            labels.append(batch_labels)
            progress.advance(task, len(images))
    return SplitFeatures(torch.cat(features), torch.cat(labels), {int(i): r for r, i in enumerate(indices)})
