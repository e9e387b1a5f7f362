"""Data-parallel training (models/parallel.py): 2 processes with the gloo backend on this CPU average to the
gradient one process computes on the whole batch, for GCD's and DyST's training steps; gradient accumulation
likewise; batches that do not split are refused."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.errors import InputError
from models.parallel import Parallel

BATCH = 4


def gcd_task(parallel: Parallel):
    from models.gcd.model import GCDModel, small_configs
    from models.gcd.train import DiffusionTask

    torch.manual_seed(0)
    model = GCDModel.from_configs(small_configs(channels=(32, 64), vae_channels=(32, 32), token_dim=32), seed=0)
    rng = np.random.default_rng(0)
    P, T = 6, 3
    inputs = (rng.random((P, T, 16, 16, 3)) * 255).astype(np.uint8)
    deltas = rng.uniform(-40, 40, (P, T, 3)).astype(np.float32)
    deltas[..., 2] = 0.1
    z = torch.from_numpy(rng.standard_normal((P, T, 4, 8, 8)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((P, T, 4, 8, 8)).astype(np.float32))
    task = DiffusionTask(model, inputs, deltas, z, c, batch=BATCH, seed=3, parallel=parallel)
    task.gradients(0, 0.7)  # 0.7: the focal top-k is active
    return task.params


def dyst_task(parallel: Parallel):
    from test_dyst import TINY, toy_set

    from models.dyst.train import DySTTask, TrainConfig

    cfg = TrainConfig(seed=1, batch=BATCH, rays=16, real_every=0, head_weight=0.0)
    task = DySTTask(toy_set(scenes=4), TINY, cfg, "cpu", parallel=parallel)
    task.gradients(0)
    return list(task.model.parameters())


TASKS = {"gcd": gcd_task, "dyst": dyst_task}


def flat_grads(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).detach()


def _worker(rank: int, world: int, port: int, name: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        grads = flat_grads(TASKS[name](Parallel(rank, world, torch.device("cpu"))))
        torch.save(grads, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["gcd", "dyst"])
def test_two_gloo_processes_average_to_the_single_process_gradient(tmp_path, name, one_torch_thread):
    single = flat_grads(TASKS[name](Parallel()))
    assert float(single.abs().sum()) > 0
    mp.spawn(_worker, args=(2, free_port(), name, str(tmp_path / "g")), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "g.0"), torch.load(tmp_path / "g.1")
    assert torch.equal(g0, g1)  # every process steps with the same gradient: the weights stay identical
    torch.testing.assert_close(g0, single, rtol=1e-4, atol=1e-6)


def test_accumulation_matches_the_whole_batch(one_torch_thread):
    single = flat_grads(gcd_task(Parallel()))
    accumulated = flat_grads(gcd_task(Parallel(accumulate=2)))
    torch.testing.assert_close(accumulated, single, rtol=1e-4, atol=1e-6)


def test_shards_and_uneven_batches():
    p = Parallel(rank=1, world=2, accumulate=2)
    assert [s.tolist() for s in p.shards(8)] == [[1, 3], [5, 7]]
    with pytest.raises(InputError, match="multiple of 4"):
        p.shards(6)
