"""Several processes, one training run: the small amount of glue `torchrun` needs.

`torchrun --nproc_per_node=N -m vitlab.finetune ...` starts N copies of the job with RANK, WORLD_SIZE and LOCAL_RANK
set. Each process trains on its own shard of every batch (DistributedDataParallel averages the gradients), metrics
are summed over processes, and only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Process:
    """Where this process sits in the run."""

    rank: int = 0  # 0 .. world_size-1; rank 0 writes files and shows progress
    world_size: int = 1  # number of processes
    local_rank: int = 0  # index on this machine: picks the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its launch (or the only process): read before the process group starts."""
    return int(os.environ.get("RANK", "0")) == 0


def start(device: torch.device) -> tuple[Process, torch.device]:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU) and pick this rank's device."""
    if not launched_by_torchrun():
        return Process(), device
    process = Process(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", process.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return process, device


def share_from_main(value: Any, process: Process) -> Any:
    """Rank 0's `value` on every process (a picklable object; itself when not distributed).

    What one rank decides alone (the run folder, whether its lock was taken) reaches the others this way, so that
    every rank goes on, or stops, together instead of waiting for a rank that has left.
    """
    if not process.distributed:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor, process: Process, equal: bool) -> Tensor:
    """This process's share of `indices`: every world_size-th item starting at its rank.

    equal=True (training) trims every shard to the same length so all processes take the same number of steps;
    equal=False (evaluation) keeps every item exactly once, with no padded duplicates to bias the metrics.
    """
    mine = indices[process.rank :: process.world_size]
    if equal:
        mine = mine[: len(indices) // process.world_size]
    return mine
