"""Data parallel and FSDP2 under torchrun: the process group, collectives, gradient sync, sharding.

Rank 0's weights are broadcast to every rank at the start; gradients are summed over ranks and clipped; FSDP2 shards
are gathered for a no-grad loop (sampling, judging) once, not once per forward.

Imports model.py only (a family's decoder layers and vision blocks become FSDP units).

One process by default. Under torchrun a process group exists whatever its size (so that `torchrun
--nproc_per_node 1` on one GPU runs NCCL as 8 GPUs do), every collective takes tensors on the group's device (NCCL
reduces CUDA tensors only), and each rank starts from rank 0's weights. Replicated by default: each rank holds the
whole model and gradients are summed explicitly before each step. With --fsdp, FSDP2 shards weights, gradients and
optimizer state, and sums the gradients itself in backward.
"""
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

import model as M


def init_distributed(timeout_minutes: float = 60) -> tuple[int, int, str]:
    """(rank, world size, device). Under torchrun: a process group (NCCL on GPUs, gloo on CPU); else one process.
    A collective waits up to `timeout_minutes` (--dist-timeout) before the job is aborted: NCCL's default 10 minutes
    is shorter than rank 0 takes to write a full fine-tune's checkpoint of the 3B model (~37 GB) to a slow disk while
    the other ranks wait at its barrier."""
    if "RANK" not in os.environ:
        return 0, 1, M.default_device()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size(), f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def finish():
    """End the process group with every rank at once: a rank that tears gloo down while another still writes the
    final model can abort at exit ("terminate called without an active exception")."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def group_device() -> torch.device:
    """The device of the process group's collectives: this rank's GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier():
    if dist.is_initialized():
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def all_reduce_sum(value: float | dict) -> float | dict:
    """The sum over ranks of a number, or of each number of a dict (in one collective); as is without a group."""
    if not dist.is_initialized():
        return value
    numbers = list(value.values()) if isinstance(value, dict) else [value]
    t = torch.tensor([float(x) for x in numbers], dtype=torch.float64, device=group_device())
    dist.all_reduce(t)
    summed = t.tolist()
    return dict(zip(value, summed)) if isinstance(value, dict) else summed[0]


def broadcast_parameters(model):
    """Rank 0's weights on every rank, whatever each rank's seed made of its own (a LoRA's random init, say)."""
    if dist.is_initialized():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    return model


def sync_grads(params, bucket_mb: float = 32):
    """Sum gradients over ranks (each rank's loss is already divided by the global count), a flat bucket of up to
    `bucket_mb` MB per all-reduce rather than one collective per parameter (~440 at 3B). FSDP's sharded parameters
    are skipped: their gradients were reduce-scattered, summed, in backward."""
    if not dist.is_initialized():
        return
    from torch.distributed.tensor import DTensor
    grads = []
    for p in params:
        if isinstance(p, DTensor):
            continue
        if p.grad is None:  # unused on this rank (e.g. no image): every rank must join every all-reduce
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    buckets, size = [[]], 0
    for g in grads:  # consecutive gradients of one dtype, up to bucket_mb a bucket
        if buckets[-1] and (size + g.numel() * g.element_size() > bucket_mb * 2**20 or g.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.numel() * g.element_size()
    for bucket in buckets:
        if bucket:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            for g, summed in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(summed.view_as(g))


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip the gradients' global norm to max_norm; returns the norm before clipping (over all shards under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()


def _fsdp_units(model) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard(model):
    """FSDP2 (torch's fully_shard): weights, gradients and optimizer state sharded over the ranks, one unit per decoder
    layer and vision block, then the rest (embeddings, LM head, vision merger) at the root. Gradients are summed over
    ranks, as sync_grads does, not averaged. Needs a process group (torchrun, even of one process)."""
    from torch.distributed.fsdp import fully_shard
    if not dist.is_initialized():
        raise SystemExit("--fsdp needs a process group: run the script with torchrun (torchrun --nproc_per_node 1 "
                         "... on one GPU)")
    for unit in M.fsdp_units(model):  # the family's vision blocks and the language model's decoder layers
        fully_shard(unit)
    fully_shard(model)
    for unit in _fsdp_units(model):
        unit.set_gradient_divide_factor(1.0)
        if dist.get_backend() == "gloo":
            unit.set_force_sum_reduction_for_comms(True)  # a plain sum: gloo has no pre-multiplied one
    # FSDP2 takes the first unit to run forward as the root; generate runs the vision blocks before the root's
    # forward, so the root runs once now
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=group_device()), logits_to_keep=1)
    model.reshard()  # the root keeps its weights gathered after a forward: shard them again for the optimizer
    return model


@contextmanager
def unsharded(model):
    """Every FSDP unit of `model` gathered for the block, and kept gathered across forwards: generation runs one
    forward per token, which would otherwise all-gather every layer every time. A no-op for a model not sharded."""
    units = _fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # the root never reshards after forward

