"""Random GFSS tasks for the method tests (small, deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfss_bench.methods.contract import Task


def _blobs(gen: torch.Generator, count: int, size: int, low: int = 2) -> torch.Tensor:
    """[count, size, size] bool maps of random axis-aligned boxes (object-like regions)."""
    out = torch.zeros(count, size, size, dtype=torch.bool)
    for i in range(count):
        y0, x0 = torch.randint(0, size - low, (2,), generator=gen).tolist()
        hh, ww = torch.randint(low, size // 2 + low, (2,), generator=gen).tolist()
        out[i, y0:y0 + hh, x0:x0 + ww] = True
    return out


def make_task(num_base: int = 4, num_novel: int = 3, shots: int = 1, queries: int = 3, channels: int = 16,
              feat: int = 7, label: int = 49, seed: int = 0, standard: bool = False,
              ignore_frac: float = 0.1, with_query_labels: bool = True) -> Task:
    """A random task. Features are post-ReLU-like; support masks hold 0 / novel / 255 (practical),
    plus base labels when `standard`; queries hold every label kind and 255 where not valid."""
    gen = torch.Generator().manual_seed(seed)
    nb = num_base + 1
    kc = nb + num_novel
    base_weight = torch.randn(channels, nb, generator=gen) * 0.3
    base_bias = torch.randn(nb, generator=gen) * 0.1
    sfeat = torch.relu(torch.randn(num_novel, shots, channels, feat, feat, generator=gen))
    qfeat = torch.relu(torch.randn(queries, channels, feat, feat, generator=gen))

    slab = torch.zeros(num_novel, shots, label, label, dtype=torch.long)
    for j in range(num_novel):
        obj = _blobs(gen, shots, label, low=max(2, label // 6))
        slab[j][obj] = nb + j
        if standard:
            base_region = _blobs(gen, shots, label) & ~obj
            cls = torch.randint(1, nb, (shots,), generator=gen)
            for s in range(shots):
                slab[j, s][base_region[s]] = cls[s]
    # make the novel features of labelled pixels a bit distinctive
    small = F.interpolate(slab.float().flatten(0, 1).unsqueeze(1), size=(feat, feat), mode="nearest")
    small = small.long().view(num_novel, shots, 1, feat, feat)
    for j in range(num_novel):
        direction = torch.relu(torch.randn(channels, generator=gen)).view(1, 1, channels, 1, 1)
        sfeat = sfeat + (small == nb + j).float() * direction
    ign = torch.rand(num_novel, shots, label, label, generator=gen) < ignore_frac
    slab[ign] = 255
    slab[..., -3:, :] = 255  # padding-like border

    qlab = torch.randint(0, kc, (queries, label, label), generator=gen)
    qign = torch.rand(queries, label, label, generator=gen) < ignore_frac
    qlab[qign] = 255
    qlab[:, :, -4:] = 255
    valid = qlab != 255
    return Task(base_weight=base_weight, base_bias=base_bias, support_features=sfeat, support_labels=slab,
                query_features=qfeat, query_valid=valid, query_labels=qlab if with_query_labels else None,
                seed=seed)
