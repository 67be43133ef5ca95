"""Training on several processes: ``torchrun --nproc-per-node N -m ddpmkit train ...``.

torchrun starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in their environment. :func:`setup` joins them into one process group
(NCCL between GPUs, gloo between CPU processes), once, and every other part of the library
asks :func:`world` who it is. Without torchrun nothing changes: one process, rank 0.

How the trainer divides the work (``ddpmkit.train.Trainer``):

1. every rank draws the *whole* global batch from the same seeded generator (indices, label
   dropout, timesteps, noise) and keeps its own contiguous part, rank r taking entries
   r·B/N to (r+1)·B/N: the batches, and the generator's state in a checkpoint, are those
   of a single process, so a run can be resumed with any number of processes;
2. DistributedDataParallel averages the gradients of the N equal parts, which is the
   gradient of the global batch's mean loss;
3. rank 0 alone writes the run folder (atomically), and the others wait for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0 .. size-1
    size: int = 1  # processes in the run
    local_rank: int = 0  # this process on its machine (its GPU index)

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> World:
    """Join the process group torchrun prepared (no-op for a single process); ``device``
    picks the backend: NCCL for CUDA, gloo for the CPU."""
    if not launched():
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world()


def world() -> World:
    """Who this process is in the current run (rank 0 of 1 without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the processes (``x`` itself for one process)."""
    if world().size == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world().size


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
