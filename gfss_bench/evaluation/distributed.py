"""Sharding a run across processes with torch.distributed (`torchrun --nproc-per-node N -m gfss_bench run ...`).

Every process builds the same episodes and fits every method on the same supports; the query batches of an
episode are dealt out round-robin (batch b goes to rank b % world_size), so each batch is computed exactly as in
a single process. The per-episode confusion matrices are summed with all-reduce (integer sums: exact) and only
rank 0 reads checkpoints, writes results and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """This process's place in the group; the default is a single process outside any group."""

    rank: int = 0
    world_size: int = 1
    grouped: bool = False  # joined a torch.distributed process group (under torchrun, also with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether collectives run: under torchrun even with one process, so that `--nproc-per-node 1` exercises
        the same NCCL/gloo calls as N processes."""
        return self.grouped

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items` (round-robin)."""
        return list(items[self.rank::self.world_size])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all ranks (returned on the tensor's original device)."""
        if not self.active:
            return tensor
        original = tensor.device
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.to(original)

    def agree(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (decisions that read the store are taken once, by rank 0)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE_PROCESS = Workers()


def from_environment(device: str) -> Workers:
    """Join the process group described in the environment (WORLD_SIZE > 1, or any torchrun launch, also with one
    process); else one process outside any group.

    The backend is NCCL when the run uses CUDA, gloo otherwise; each rank takes GPU LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it
        return SINGLE_PROCESS
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size(), grouped=True)


def shutdown(workers: Workers) -> None:
    if workers.active and dist.is_initialized():
        dist.destroy_process_group()
