"""Device names: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved once for every command."""

from __future__ import annotations

import os
import re

import torch

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
