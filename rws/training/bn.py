"""BatchNorm recalibration: re-estimate running statistics on (corrupted) images, weights untouched."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from rws.data.severity import severity_range
from rws.data.types import Split
from rws.errors import UsageError
from rws.robustness.corruptions import get_corruption
from rws.robustness.inputs import random_corruption
from rws.runtime.checks import check_float, check_int
from rws.runtime.device import model_device
from rws.runtime.seed import generator as seeded_generator

logger = logging.getLogger(__name__)

__all__ = ["recalibrate_bn"]


def recalibrate_bn(
    model: nn.Module,
    x: torch.Tensor | Split,
    *,
    corruption: str | Sequence[str] | None = None,
    severity: int | tuple[int, int] | None = None,
    batch_size: int = 128,
    momentum: float | None = None,
    generator: torch.Generator | None = None,
    mix: float | None = None,
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on (optionally corrupted) images; weights untouched.

    Every BatchNorm layer's running mean and variance are reset and re-estimated in train mode
    (the rest of the model in eval mode, so dropout stays off), under ``torch.no_grad``. The
    layers' ``momentum`` and ``num_batches_tracked`` are restored afterwards. With ``mix = α``
    the result is ``(1 − α)·old + α·new``, ``old`` being the statistics the model had (for a
    patched model, the patched ones), as the RWS reference does for ResNets after patching at α.

    Args:
        model: the model, recalibrated in place on the device it is on.
        x: images ``(N, 3, H, W)`` in [0, 1] (or a :class:`Split`).
        corruption: one name or several (one drawn per batch); ``None`` uses the clean images.
        severity: a severity or an inclusive range ``(lo, hi)``, drawn per batch; needed with
            ``corruption``.
        batch_size: images per forward pass.
        momentum: BatchNorm momentum during the pass; ``None`` is a cumulative average.
        generator: source of the corruption draws; ``None`` means a generator seeded with 0.
        mix: α in [0, 1] to mix old and new statistics; ``None`` (or 1) keeps the new ones.

    Returns:
        ``model``, in eval mode.

    Raises:
        UsageError: no images, a bad severity, momentum or mix, a severity without a corruption.
        UnknownNameError: an unknown corruption.

    Example:
        >>> recalibrate_bn(model, data.train.x, corruption="fog", severity=5)  # doctest: +SKIP
    """
    images = x.x if isinstance(x, Split) else x
    names = (corruption,) if isinstance(corruption, str) else tuple(corruption or ())
    for name in names:
        get_corruption(name)
    if names and severity is None:
        raise UsageError("recalibrate_bn: give the severity of the corruption")
    if severity is not None and not names:
        raise UsageError("recalibrate_bn: a severity needs a corruption")
    sev = severity_range(severity) if severity is not None else (1, 1)
    check_int("batch_size", batch_size, 1)
    if momentum is not None and not 0.0 < check_float("momentum", momentum, 0.0) <= 1.0:
        raise UsageError(f"momentum must be in (0, 1] or None, got {momentum!r}")
    if mix is not None and check_float("mix", mix, 0.0) > 1.0:
        raise UsageError(f"mix must be in [0, 1] (the patch's α), got {mix!r}")
    if len(images) == 0:
        raise UsageError("recalibrate_bn: no images to estimate the statistics on")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns = [m for m in bns if m.track_running_stats]
    model.eval()
    if not bns:
        logger.warning("the model has no BatchNorm running statistics; nothing to recalibrate")
        return model
    g = generator if generator is not None else seeded_generator(0)
    dev = model_device(model)
    saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    done = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = momentum
            m.train()
        with torch.no_grad():
            for a in range(0, len(images), batch_size):
                xb = images[a : a + batch_size].to(dev)
                model(random_corruption(xb, names, sev, g) if names else xb)
        done = True
    finally:
        for m, (mom, buffers) in zip(bns, saved, strict=True):
            m.momentum = mom
            m.eval()
            for k, b in m.named_buffers(recurse=False):
                if not done or k == "num_batches_tracked":
                    b.copy_(buffers[k])
                elif mix is not None and mix != 1.0 and k in ("running_mean", "running_var"):
                    b.mul_(mix).add_(buffers[k], alpha=1.0 - mix)  # (1 − α)·old + α·new
    return model
