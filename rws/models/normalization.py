"""Where a model's input normalisation comes from, and how to change or check it.

rws's own models normalise inside (a ``normalize`` layer with non-persistent buffers), so they
take images in [0, 1]. Weights trained elsewhere may expect raw [0, 1] inputs (most RobustBench
CIFAR-10 models, TRADES checkpoints) or carry their own normalisation: loaded into an rws model
they would be normalised twice. ``normalize`` says which statistics the model applies:

- ``None``: the model's default (built-ins: CIFAR-10; ``timm:``: its pretrained config;
  ``torchvision:``: ImageNet);
- ``"none"``: no normalisation (the weights take [0, 1] inputs or normalise themselves);
- ``"cifar10"``, ``"cifar100"``, ``"imagenet"``: those datasets' usual mean and std;
- ``"M1,M2,M3/S1,S2,S3"``: explicit per-channel mean and std (``;`` may replace the commas, as
  it does inside a model spec's options).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from rws.errors import UsageError
from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize

logger = logging.getLogger(__name__)

Stats = tuple[tuple[float, ...], tuple[float, ...]]

NAMED_STATS: dict[str, Stats] = {
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZE_CHOICES = ("none", *NAMED_STATS, "M1,M2,M3/S1,S2,S3")

# State-dict names under which checkpoints from other codebases keep their own input statistics
# (RobustBench wrappers, TRADES/MART forks, `transforms.Normalize` saved as a module).
_SELF_NORMALISING = ("mu", "sigma", "mean", "std", "norm.mean", "norm.std", "normalize.mean",
                     "normalize.std", "normalizer.mean", "normalizer.std")  # fmt: skip


def parse_normalize(spec: str | None) -> Stats | str | None:
    """``spec`` → ``None`` (model default), ``"none"`` or explicit ``(mean, std)``.

    Raises:
        UsageError: an unknown name, or mean/std lists that are not numbers of equal length with
            positive, finite std.
    """
    if spec is None:
        return None
    key = spec.strip().lower()
    if key == "none":
        return "none"
    if key in NAMED_STATS:
        return NAMED_STATS[key]
    mean_s, sep, std_s = spec.partition("/")
    try:
        mean = tuple(float(v) for v in mean_s.replace(";", ",").split(","))
        std = tuple(float(v) for v in std_s.replace(";", ",").split(","))
    except ValueError:
        mean, std = (), ()
    ok = sep and mean and len(mean) == len(std) and all(math.isfinite(v) for v in mean + std)
    if not ok or min(std) <= 0:
        raise UsageError(
            f"normalize {spec!r}: expected one of {', '.join(NORMALIZE_CHOICES)} "
            "(explicit stats: equal-length mean and positive std lists)"
        )
    return mean, std


def set_normalization(model: nn.Module, spec: str | None, *, what: str = "model") -> nn.Module:
    """Give ``model`` the input normalisation ``spec`` names (in place; returns the model).

    The model must have a ``normalize`` submodule (every built-in, ``timm:`` and
    ``torchvision:`` model has one); ``None`` leaves it as it is.

    Raises:
        UsageError: a bad spec, or a model without a ``normalize`` layer.
    """
    stats = parse_normalize(spec)
    if stats is None:
        return model
    if not isinstance(getattr(model, "normalize", None), nn.Module):
        raise UsageError(f"{what}: has no 'normalize' layer, so --normalize cannot change it")
    model.normalize = nn.Identity() if stats == "none" else Normalize(*stats)
    logger.info("%s: input normalisation set to %s", what, spec)
    return model


def self_normalising_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names in a checkpoint that look like input statistics stored with the weights.

    A 3-element (or ``1×3×1×1``) tensor named ``mu``/``sigma``/``mean``/``std`` (also under
    ``norm.``/``normalize.``/``normalizer.``): such a checkpoint normalises its inputs itself.
    """
    found = []
    for name, t in state.items():
        if name in _SELF_NORMALISING and t.numel() in (1, 3) and t.is_floating_point():
            found.append(name)
    return found


@torch.no_grad()
def probe_normalization(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256
) -> dict[str, float]:
    """Accuracy of ``model`` on ``(x, y)`` with its current normalisation and with none.

    Weights that expect raw [0, 1] inputs score far better under ``"none"``; a double
    normalisation shows as a large gap. The model's ``normalize`` layer is restored afterwards.

    Returns:
        ``{"current": acc, "none": acc}`` in [0, 1].
    """
    if not isinstance(getattr(model, "normalize", None), nn.Module):
        raise UsageError("model: has no 'normalize' layer to probe")
    was_training = model.training
    original = model.normalize
    model.eval()
    result = {}
    try:
        for label, layer in (("current", original), ("none", nn.Identity())):
            model.normalize = layer
            correct = 0
            for s in range(0, len(y), batch_size):
                logits = model(x[s : s + batch_size])
                correct += int((logits.argmax(1) == y[s : s + batch_size]).sum())
            result[label] = correct / max(1, len(y))
    finally:
        model.normalize = original
        model.train(was_training)
    return result
