"""Data-parallel training across processes (torchrun / accelerate launch; one process per GPU, any nodes).

Every process builds the same model from the same seed and draws the same *global* batch from the same
generator; each computes its share (`Parallel.shards`: items rank, rank + world, ..., split into `accumulate`
micro-batches), then the gradients are averaged over the processes (`average_gradients`: one flat
all-reduce, what DDP's buckets do) before the optimizer steps, so every process keeps identical weights and
the result equals one process on the whole batch. bf16 autocast on CUDA (`autocast`). Only rank 0 writes
(metrics, resume states, the model); the time budget is rank 0's clock (`agree`), so every process stops at
the same step. Resume reads the state file on every process: multi-node runs need a shared --out folder.

Launch with torchrun, one process per GPU (commands in docs/training.md). The environment
variables torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) select the process group;
NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from models.errors import InputError


@dataclass
class Parallel:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    accumulate: int = 1  # micro-batches per optimizer step on each process

    @staticmethod
    def from_env(device: str = "auto", accumulate: int = 1) -> "Parallel":
        """One process (no launcher), or this process's place in the group torchrun started."""
        from models.devices import resolve_device

        if accumulate < 1:
            raise InputError(f"--accumulate must be at least 1, got {accumulate}")
        dev = resolve_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Parallel(device=dev, accumulate=accumulate)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return Parallel(dist.get_rank(), dist.get_world_size(), dev, accumulate)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch: int) -> None:
        if batch % (self.world * self.accumulate):
            raise InputError(f"--batch {batch} must split evenly over {self.world} process(es) x {self.accumulate} "
                             f"accumulation step(s): use a multiple of {self.world * self.accumulate}")

    def shards(self, batch: int) -> list[Tensor]:
        """Positions in the global batch this process computes, one index tensor per micro-batch."""
        self.check_batch(batch)
        return list(torch.arange(batch)[self.rank::self.world].chunk(self.accumulate))

    def autocast(self):
        """bf16 autocast on CUDA (the weights and the optimizer stay fp32); nothing on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of each parameter's gradient over the processes (missing gradients count as zero)."""
        if self.world <= 1:
            return
        params = [p for p in params if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def agree(self, value: float) -> float:
        """Rank 0's value on every process (e.g. the elapsed seconds a time budget reads)."""
        if self.world <= 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

