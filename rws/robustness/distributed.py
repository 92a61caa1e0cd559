"""Data-parallel sharding for evaluations launched with ``torchrun`` (``torch.distributed``).

Examples are cut into global batches of ``batch_size``; each rank takes a contiguous run of whole
batches, so every batch (and every seed derived from its index) is the same whatever the world size,
and gathering the per-batch results in batch order reproduces a single-process run exactly.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from rws.io.hashing import text_sha256

logger = logging.getLogger(__name__)


def is_initialized() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return rank_and_world()[0] == 0


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Global batches ``[(start, stop), …]`` covering ``range(n)``."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def shard(n_batches: int, rank: int, world: int) -> range:
    """The contiguous run of batch indices rank ``rank`` of ``world`` evaluates.

    The first ``n_batches % world`` ranks take one batch more; a rank may get none.

    Example:
        >>> [list(shard(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    per, extra = divmod(n_batches, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process).

    Tensors inside ``obj`` should be on the CPU (gloo and nccl both accept pickled CPU objects).
    """
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_results(
    local: dict[str, torch.Tensor], digests: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Concatenate per-example results from every rank in rank order (= batch order, as shards are
    contiguous) and merge the per-batch input digests."""
    parts = gather((local, digests))
    keys = dict.fromkeys(k for p, _ in parts for k in p)
    merged = {k: torch.cat([p[k] for p, _ in parts if k in p]) for k in keys}
    return merged, {k: v for _, d in parts for k, v in d.items()}


def combined_digest(digests: dict[str, str], keys: list[str], n_batches: int) -> str:
    """One sha256 over the per-batch digests ``"{key}#{batch}"`` in a fixed order, independent of
    how the batches were sharded."""
    return text_sha256("".join(digests[f"{key}#{b}"] for key in keys for b in range(n_batches)))


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_from_env(device: str = "auto") -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Uses nccl when CUDA is requested (or ``auto`` finds it) and gloo otherwise. Does nothing when
    ``WORLD_SIZE`` is unset or 1, or when a group already exists.

    Returns:
        True when this process is now part of a group of more than one rank.
    """
    if is_initialized():
        return dist.get_world_size() > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    logger.info("joined %s process group: rank %d of %d", backend, dist.get_rank(), world)
    return True
