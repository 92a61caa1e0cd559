"""Numeric precision of forward passes: ``fp32``, or ``bf16`` / ``fp16`` autocast, on any device.

One home for the precision switch of every command: :func:`autocast` wraps the forward passes,
:func:`autocast_dtype` says which dtype a precision runs in on a device. Losses and input gradients
stay fp32 (callers cast logits with ``.float()``); weights are never converted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from rws.errors import UsageError

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["PRECISIONS", "Precision", "autocast", "autocast_dtype", "check_precision"]


def check_precision(precision: object) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        UsageError: anything else.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` runs in on ``device``; None for fp32.

    ``bf16`` on a CUDA device without bf16 support falls back to fp16 (logged).

    Example:
        >>> autocast_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
        >>> autocast_dtype("fp32", torch.device("cpu")) is None
        True
    """
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("%s has no bf16 support; autocasting to fp16 instead", device)
        return torch.float16
    return _DTYPES[precision]


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[torch.dtype]:
    """Autocast the block to ``precision`` on ``device`` (autocast off for fp32); yields the dtype
    the forwards run in (``torch.float32`` for fp32).

    Example:
        >>> with autocast("bf16", torch.device("cpu")) as dtype:
        ...     y = torch.nn.Linear(4, 2)(torch.ones(1, 4))
        >>> dtype, y.dtype
        (torch.bfloat16, torch.bfloat16)
    """
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        with torch.autocast(device.type, enabled=False):
            yield torch.float32
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield dtype
