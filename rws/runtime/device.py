"""Device names: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved once for every command."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

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
