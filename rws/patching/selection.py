"""Which tensors a patch touches: globs, depth order, first-K layers, energy-based selection.

A *layer* is a module that owns a weight of rank ≥ 2 (a conv or linear), together with its bias
and the normalisation layers (1-D tensors only, e.g. BatchNorm's weight/bias/running stats) that
follow it in depth order. Depth order comes from the model's forward pass where the model is
known, else from the checkpoint's storage order (:mod:`rws.patching.order`). Integer tensors
(``num_batches_tracked``) are never selected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from rws.errors import UsageError
from rws.io.checkpoint import Checkpoint, is_integer_dtype
from rws.patching.order import DepthOrder, looks_sorted, natural_key


@dataclass(frozen=True)
class Layer:
    """A named group of tensors in depth order."""

    name: str
    tensors: tuple[str, ...]


def module_of(tensor: str) -> str:
    """``"layer1.0.conv1.weight"`` → ``"layer1.0.conv1"``."""
    return tensor.rsplit(".", 1)[0] if "." in tensor else tensor


def group_layers(names: Sequence[str], shape: Callable[[str], tuple[int, ...]]) -> list[Layer]:
    """Group tensor names into layers in depth order (see the module docstring)."""
    modules: dict[str, list[str]] = {}
    for n in names:
        modules.setdefault(module_of(n), []).append(n)
    layers: list[list[str]] = []
    heads: list[str] = []
    for mod, members in modules.items():
        is_norm = all(len(shape(n)) <= 1 for n in members)
        if is_norm and layers and any(len(shape(n)) >= 2 for n in layers[-1]):
            layers[-1].extend(members)
        else:
            layers.append(list(members))
            heads.append(mod)
    return [Layer(h, tuple(m)) for h, m in zip(heads, layers, strict=True)]


def match(
    names: Sequence[str], include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[str]:
    """Names matching any ``include`` glob (all if none) and no ``exclude`` glob."""
    out = [n for n in names if not include or any(fnmatch.fnmatchcase(n, g) for g in include)]
    return [n for n in out if not exclude or not any(fnmatch.fnmatchcase(n, g) for g in exclude)]


def depth_order(
    names: Sequence[str], dtype_of: Callable[[str], torch.dtype] | None = None
) -> list[str]:
    """Names in depth order, from the names alone.

    Storage order is definition order for state dicts, pickles and files rws writes; writers that
    sort names alphabetically (``safetensors.save_file``) lose it, and then a natural ordering of
    the dotted names (numbers numerically; conv/linear before norm before the next block; unnumbered
    heads such as ``fc`` last) stands in for it. Where the model is known, its forward pass gives
    the order instead (:mod:`rws.patching.order`).
    """
    names = list(names)
    return sorted(names, key=natural_key) if looks_sorted(names, dtype_of) else names


def candidates(
    base: Checkpoint,
    tuned: Checkpoint | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    order: DepthOrder | None = None,
) -> list[str]:
    """Float tensors of ``base`` matching the globs (and present in ``tuned``, if given), in
    ``order`` (default: :func:`depth_order` of the names)."""
    ordered = order.sort(base.keys()) if order else depth_order(base.keys(), base.dtype)
    names = [n for n in ordered if not is_integer_dtype(base.dtype(n))]
    if tuned is not None:
        names = [n for n in names if n in tuned]
    return match(names, include, exclude)


def shallow(layers: Sequence[Layer], k: int) -> list[Layer]:
    """The first ``k`` layers."""
    if k < 1:
        raise UsageError(f"--shallow {k}: must be at least 1")
    return list(layers[:k])


def relative_energy(delta: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    """``(‖δ‖², ‖w‖²)`` in float64."""
    d = delta.detach().to(torch.float64)
    w = base.detach().to(torch.float64)
    return float((d * d).sum()), float((w * w).sum())


RUNNING_STATS = ("running_mean", "running_var")


def is_running_stat(name: str) -> bool:
    """True for a normalisation layer's running statistic (``running_mean``/``running_var``).

    Example:
        >>> is_running_stat("bn1.running_var"), is_running_stat("bn1.weight")
        (True, False)
    """
    return name.rsplit(".", 1)[-1] in RUNNING_STATS


def weights_only(energy: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``energy`` without the running statistics (see :func:`is_running_stat`)."""
    return {n: e for n, e in energy.items() if not is_running_stat(n)}


def layer_energy(layer: Layer, energy: Mapping[str, tuple[float, float]]) -> float:
    """A layer's relative delta energy ``Σ‖δ‖² / Σ‖w‖²`` over its tensors (those in ``energy``)."""
    num = sum(energy[n][0] for n in layer.tensors if n in energy)
    den = sum(energy[n][1] for n in layer.tensors if n in energy)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def by_energy(layers: Sequence[Layer], energies: Sequence[float], fraction: float) -> list[Layer]:
    """The shallowest layers holding ``fraction`` of the total relative delta energy."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--energy {fraction}: must be in (0, 1]")
    finite = [e if e != float("inf") else 0.0 for e in energies]
    total = sum(finite)
    if total == 0.0:
        return []
    out: list[Layer] = []
    acc = 0.0
    for layer, e in zip(layers, finite, strict=True):
        out.append(layer)
        acc += e
        if acc >= fraction * total * (1 - 1e-12):
            break
    return out
