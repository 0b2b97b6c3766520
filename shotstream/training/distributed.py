"""Data parallelism for the trainer: process-group setup, parameter broadcast, gradient averaging.

Gradients are averaged with one explicit all-reduce after backward instead of wrapping modules in
`DistributedDataParallel`: a self-forcing rollout calls the generator many times before a single
backward, and a DMD step updates the generator and the critic with separate optimizers, both of
which DDP's per-forward hooks handle badly. The semantics are DDP's (rank 0's weights broadcast
once, gradients averaged over ranks every update), with no wrapper the stage has to know about.
Single process (no `torchrun`) is world size 1 and every function here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from shotstream.runtime import check_device


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # this process group was created by setup() (and is destroyed by teardown())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str, timeout: timedelta | None = None) -> World:
    """Join the `torchrun` process group if there is one: nccl for CUDA devices, gloo otherwise.

    timeout: how long a collective may wait (torch's default otherwise), e.g. long for a rank
    that finishes its share of a benchmark early and waits for the others at a barrier."""
    check_device(device)  # (a config file's device too)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        return World(0, 1, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)  # one GPU per local process
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), dev, owns_group)


def teardown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.world_size > 1:
        dist.barrier()


def broadcast_module(module: nn.Module, world: World) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if world.world_size == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def gather_objects(obj, world: World) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world.world_size == 1:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[nn.Parameter], loss: float, nonfinite: bool, world: World) -> tuple[float, bool]:
    """Average `.grad` of `params`, the loss and the non-finite flag over ranks, in one all-reduce.

    Returns (mean loss over ranks, whether any rank saw a non-finite loss). A parameter that got
    no gradient on any rank keeps `.grad = None`, so AdamW skips it exactly as in one process.
    """
    if world.world_size == 1:
        return loss, nonfinite
    # Flat fp32 buffer: [grads..., has_grad flags..., loss, nonfinite]; zeros stand in for None.
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=world.device)
    tail = torch.tensor([loss, float(nonfinite)], device=world.device)
    flat = torch.cat([*grads, has_grad, tail])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        g = flat[offset : offset + p.numel()]
        offset += p.numel()
        p.grad = (g / world.world_size).view_as(p).to(p.dtype).clone()
    for p, flag in zip(params, flat[offset : offset + len(params)].tolist()):
        if flag == 0:
            p.grad = None
    loss_sum, bad = flat[-2:].tolist()
    return loss_sum / world.world_size, bad > 0
