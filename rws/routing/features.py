"""Per-batch features a routing detector classifies.

Three kinds, each a fixed-length float64 vector per batch:

- ``input``: image statistics, per image then mean and spread over the batch: intensity mean,
  contrast (standard deviation, range of 2×2 means), clipped shares at 0 and 1, a noise estimate
  (Immerkær's Laplacian-difference σ), sharpness (mean gradient over contrast), Laplacian energy
  over variance, four radial frequency-band energy shares and colourfulness. No model pass.
- ``activation``: what BatchNorm sees, per channel mean and log-variance of the inputs of the
  model's first ``depth`` BatchNorm layers (its first convolutions when it has none), from a
  forward pass stopped right after the last of them.
- ``prototype``: weight prototypes in the spirit of PEFT's Arrow router: for each signature, the
  top right-singular vector of its delta on the first convolution it patches; the feature is the
  mean |projection| of the batch's input patches at that convolution on each prototype, over their
  mean norm.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rws.errors import UsageError
from rws.runtime.modes import eval_mode

__all__ = ["activation_features", "input_features", "prototype_features", "prototypes"]

_BANDS = (0.0625, 0.125, 0.25)  # radial frequency band edges (cycles per pixel)
_EPS = 1e-4
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _per_image(x: torch.Tensor) -> torch.Tensor:
    """(N, 14) statistics of each image (float32, on ``x``'s device)."""
    g = x.float().mean(1)  # grey (N, H, W)
    n = g.shape[0]
    flat = g.reshape(n, -1)
    mean, std = flat.mean(1), flat.std(1, unbiased=False)
    pooled = F.avg_pool2d(g[:, None], 2).flatten(1)  # range of 2×2 means: robust to single pixels
    span = pooled.amax(1) - pooled.amin(1)
    low, high = (flat <= 0.02).float().mean(1), (flat >= 0.98).float().mean(1)
    g1 = g[:, None]
    lap = F.conv2d(g1, _LAPLACE.to(g)[None, None]).flatten(1)
    imm = F.conv2d(g1, _IMMERKAER.to(g)[None, None]).flatten(1)
    noise = imm.abs().mean(1) * math.sqrt(math.pi / 2) / 6
    grad = (g[:, :, 1:] - g[:, :, :-1]).abs().mean((1, 2)) + (g[:, 1:] - g[:, :-1]).abs().mean(
        (1, 2)
    )
    power = torch.fft.rfft2(g - mean[:, None, None]).abs().square()
    fy = torch.fft.fftfreq(g.shape[1], device=g.device)[:, None]
    fx = torch.fft.rfftfreq(g.shape[2], device=g.device)[None, :]
    radius = (fy.square() + fx.square()).sqrt()
    total = power.sum((1, 2)) + _EPS
    edges = (0.0, *_BANDS, math.inf)
    bands = [
        power[:, (radius >= a) & (radius < b)].sum(1) / total for a, b in itertools.pairwise(edges)
    ]
    colour = (x.float() - g[:, None]).square().mean((1, 2, 3)).sqrt()
    logs = [std, span, noise, grad / (std + 0.01), lap.square().mean(1) / (std.square() + _EPS)]
    cols = [
        mean,
        low,
        high,
        *(torch.log(v + _EPS) for v in logs),
        *(torch.log(b + _EPS) for b in bands),
    ]
    cols.append(torch.log(colour + _EPS))
    return torch.stack(cols, 1)


def input_features(x: torch.Tensor) -> torch.Tensor:
    """Batch features from the images alone: the per-image statistics' mean and standard
    deviation over the batch, float64 (28,)."""
    with torch.no_grad():
        per = _per_image(x).double()
        return torch.cat([per.mean(0), per.std(0, unbiased=False)]).cpu()


class _Enough(Exception):
    """Raised by a hook to stop a forward pass once the wanted activations are in."""


def probe_modules(model: nn.Module, depth: int) -> list[nn.Module]:
    """The first ``depth`` BatchNorm layers of ``model`` (its first convolutions without any).

    Raises:
        UsageError: the model has neither.
    """
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    mods = mods or [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not mods:
        raise UsageError(
            "the activation detector needs BatchNorm or Conv2d layers; use detector='input'"
        )
    return mods[:depth]


PROBE_IMAGES = 64  # the model-side detectors look at a batch's first 64 images


def _capture(model: nn.Module, x: torch.Tensor, mods: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The inputs of ``mods`` on the first :data:`PROBE_IMAGES` images of ``x``, from an eval-mode
    forward stopped after the last one. The features are batch means over tens of thousands of
    positions per channel; 64 images estimate them at least as well as the 32-image validation
    batches the detectors are fitted on, at a quarter of the cost of a 256-image batch."""
    x = x[:PROBE_IMAGES]
    got: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        got.append(args[0].detach())
        if len(got) == len(mods):
            raise _Enough

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(got) != len(mods):
        raise UsageError("the model's forward pass did not reach the probed layers")
    return got


def activation_features(model: nn.Module, x: torch.Tensor, depth: int) -> torch.Tensor:
    """Per-channel mean and log-variance of the inputs of the first ``depth`` BatchNorm layers
    over the batch (and positions), float64."""
    feats = []
    for a in _capture(model, x, probe_modules(model, depth)):
        dims = [0, *range(2, a.ndim)]
        # two passes over contiguous memory: 9× faster than Tensor.var over dims (0, 2, 3)
        mean = a.mean(dims)
        var = (a - mean.reshape(1, -1, *[1] * (a.ndim - 2))).square_().mean(dims)
        feats += [mean, torch.log(var + 1e-6)]
    return torch.cat(feats).double().cpu()


def first_conv(model: nn.Module, names: Sequence[str]) -> tuple[str, nn.Conv2d]:
    """The first Conv2d (in module order) whose weight is one of ``names``.

    Raises:
        UsageError: no signature patches a Conv2d weight.
    """
    wanted = set(names)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and f"{name}.weight" in wanted:
            return name, m
    raise UsageError("the prototype detector needs signatures that patch a Conv2d weight")


def prototypes(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K, C·kh·kw) unit top right-singular vectors of each (out, in, kh, kw) conv delta."""
    rows = []
    for d in deltas:
        _, _, vh = torch.linalg.svd(d.double().reshape(d.shape[0], -1), full_matrices=False)
        v = vh[0]
        rows.append(v if float(v.sum()) >= 0 else -v)  # a fixed sign (|projection| ignores it)
    return torch.stack(rows)


def prototype_features(
    model: nn.Module, x: torch.Tensor, conv: nn.Conv2d, protos: torch.Tensor
) -> torch.Tensor:
    """Mean |⟨patch, prototype⟩| over the batch's input patches at ``conv``, over their mean
    norm: one value per prototype, float64 (K,). Computed as convolutions (the prototypes as
    filters, and a box filter of the squared input for the patches' norms), not by unfolding the
    patches."""
    (a,) = _capture(model, x, [conv])
    a = a.float()
    k = protos.shape[0]
    filters = protos.to(a.device, torch.float32).reshape(k, a.shape[1], *conv.kernel_size)
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    proj = F.conv2d(a, filters, **geometry).abs().mean((0, 2, 3)).double()
    box = torch.ones(1, a.shape[1], *conv.kernel_size, device=a.device)
    norms = F.conv2d(a.square(), box, **geometry).clamp_min(0).sqrt().mean().double()
    return (proj / (norms + 1e-12)).cpu()
