"""torch.distributed helpers: one process per GPU (or CPU process with gloo) under torchrun."""
import datetime
import os

import torch
import torch.distributed as dist

from talkingface.utils.errors import TalkingFaceError


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return rank() == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup_distributed(device):
    """Join the process group torchrun describes; returns the device this rank uses.

    NCCL on CUDA, gloo on the CPU, so the same command trains on N GPUs or N CPU processes.
    """
    if not launched_by_torchrun() or is_distributed():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return device


def cleanup_distributed():
    if is_distributed():
        # Ranks may arrive far apart (rank 0 alone merges and writes results): no 30-minute limit here.
        dist.barrier(group=patient_group())
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def reduce_mean(values, device):
    """Average a dict of floats over all ranks."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= world_size()
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj, group=None):
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, group=group)
    return holder[0]


def all_gather_object(obj, group=None):
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def gather_object(obj, group=None):
    """Every rank's value of a picklable object, in rank order, on rank 0 (None on the others):
    unlike all_gather_object, only rank 0 holds them all."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0, group=group)
    return gathered


def raise_if_any_failed(error, group=None):
    """Called by every rank with its exception (or None) from work whose results a collective
    collects next: re-raises `error` here, and on the other ranks raises an error naming the first
    failed rank (a TalkingFaceError when that was one), so no rank waits forever for a failed one."""
    if is_distributed():
        report = None if error is None else (isinstance(error, TalkingFaceError), f"{type(error).__name__}: {error}")
        failed = [(r, found) for r, found in enumerate(all_gather_object(report, group)) if found is not None]
    else:
        failed = []
    if error is not None:
        raise error
    if failed:
        failed_rank, (user_error, message) = failed[0]
        raise (TalkingFaceError if user_error else RuntimeError)(f"rank {failed_rank} failed: {message}")


def patient_group(timeout=datetime.timedelta(days=7)):
    """A gloo group of all ranks whose collectives wait up to `timeout` (the default group's give
    up after 30 minutes): for ranks that finish work of unequal length. None when not distributed."""
    return dist.new_group(backend="gloo", timeout=timeout) if is_distributed() else None
