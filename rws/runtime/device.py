"""Device names: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved once for every command."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

import torch
from torch import nn

from rws.errors import UsageError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → this process's CUDA device (``LOCAL_RANK`` under torchrun) when one exists,
    else the CPU; ``"cuda[:n]"`` must exist.

    Raises:
        UsageError: an unknown device name, or CUDA asked for where there is none.
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise UsageError(f"unknown device {device!r}; choose cpu, cuda[:n] or auto")
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: no CUDA device is available; use cpu or auto")
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (else buffer) lives; the CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[torch.device]:
    """Move ``model`` to ``device`` (a name is resolved by :func:`resolve_device`) for a block and
    back to where it was afterwards, also on error; yields the device used.

    Example:
        >>> with on_device(model, "auto") as dev:  # doctest: +SKIP
        ...     logits = model(x.to(dev))
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    home = model_device(model)
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(home)


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Keep ``model``'s 4-D weights in channels-last memory for a block (faster convolutions on
    tensor cores), contiguous again afterwards; values and parameter objects are unchanged.

    Example:
        >>> with channels_last(model):  # doctest: +SKIP
        ...     logits = model(x.contiguous(memory_format=torch.channels_last))
    """
    if not enabled:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def to_device(
    x: torch.Tensor, device: torch.device, *, channels_last: bool = False
) -> torch.Tensor:
    """``x`` on ``device``: non-blocking from pinned host memory, channels-last when asked (4-D)."""
    out = x.to(device, non_blocking=x.is_pinned())
    if channels_last and out.dim() == 4:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def pinned(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in pinned (page-locked) host memory when it is on the CPU and ``device`` is CUDA (so
    copies to the device can be non-blocking); else ``x`` itself."""
    if device.type != "cuda" or x.device.type != "cpu" or x.is_pinned():
        return x
    return x.pin_memory()


def probe_batch_size(
    run: Callable[[int], object],
    device: torch.device,
    *,
    start: int,
    limit: int,
    budget: float = 0.8,
) -> int:
    """The largest ``start · 2^k ≤ limit`` for which ``run(size)`` fits on a CUDA ``device`` with
    room to spare: sizes double while the peak memory of the last one, doubled, stays within
    ``budget`` of the device's memory, and stop at the first out-of-memory error. On another
    device, ``start`` (nothing is run).

    Example:
        >>> probe_batch_size(lambda n: None, torch.device("cpu"), start=256, limit=8192)
        256
    """
    if device.type != "cuda":
        return start
    total = torch.cuda.get_device_properties(device).total_memory
    best, size = start, start
    while size <= max(limit, start):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            run(size)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        best = size
        if 2 * torch.cuda.max_memory_allocated(device) > budget * total:
            break
        size *= 2
    torch.cuda.empty_cache()
    return best
