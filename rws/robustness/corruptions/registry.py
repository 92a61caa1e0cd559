"""The corruption registry: ``register_corruption``, ``get_corruption``, ``list_corruptions``.

A corruption kernel has the signature ``f(x, c, *, generator) -> Tensor``: ``x`` is a batch
``(N, 3, H, W)`` of float images in [0, 1] (validated, on its device), ``c`` is one row of a
severity table in :mod:`rws.robustness.corruptions.params`, and ``generator`` is the
``torch.Generator`` every random draw must use. Kernels may return values outside [0, 1]: the caller
clamps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from rws.registry import Registry

Kernel = Callable[..., torch.Tensor]
Family = Literal["noise", "blur", "weather", "digital"]

CORRUPTION_REGISTRY: Registry[Kernel] = Registry("corruption")
FAMILIES: tuple[Family, ...] = ("noise", "blur", "weather", "digital")  # the benchmark's order

PAPER_URL = "https://arxiv.org/abs/1903.12261"


def register_corruption(
    name: str,
    *,
    family: Family,
    extra: bool = False,
    random: bool = True,
    summary: str = "",
    approximate: str = "",
) -> Callable[[Kernel], Kernel]:
    """Register a corruption kernel under ``name``.

    Args:
        name: Registry name, e.g. ``"fog"``.
        family: ``"noise"``, ``"blur"``, ``"weather"`` or ``"digital"``.
        extra: True for the four validation corruptions (not for headline claims).
        random: False when the kernel draws no random numbers (same output for every seed).
        summary: One line for docs; defaults to the first docstring line.
        approximate: Empty when the kernel follows the reference (hendrycks/robustness): its
            severity table and the same distribution of random draws (other random numbers); else
            how it departs, so that reports can say its numbers are not comparable with CIFAR-10-C.

    Returns:
        The decorator.
    """
    return CORRUPTION_REGISTRY.register(
        name, summary=summary, url=PAPER_URL, family=family, extra=extra, random=random,
        approximate=approximate,
    )  # fmt: skip


def get_corruption(name: str) -> Kernel:
    """The kernel registered under ``name``; raises ``UnknownNameError`` listing the choices."""
    return CORRUPTION_REGISTRY.get(name)


def corruption_info(name: str) -> dict[str, Any]:
    """``family``, ``extra``, ``random`` and ``approximate`` of a registered corruption."""
    return dict(CORRUPTION_REGISTRY.entry(name).info)


def kernel_fidelity(name: str) -> str:
    """``"reference"`` when the kernel follows the reference, else ``"approximate"``; the reason
    is ``corruption_info(name)["approximate"]``.

    Example:
        >>> kernel_fidelity("fog"), kernel_fidelity("frost")
        ('reference', 'approximate')
    """
    return "approximate" if corruption_info(name).get("approximate") else "reference"


def list_corruptions(pattern: str = "*") -> list[str]:
    """Registered corruption names matching a glob, in registration order."""
    return CORRUPTION_REGISTRY.names(pattern)


def benchmark_order(*, extra: bool) -> tuple[str, ...]:
    """The registered corruptions with this ``extra`` flag, family by family (noise, blur,
    weather, digital) and in registration order within a family: the published benchmark order.

    Example:
        >>> benchmark_order(extra=True)
        ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
    """
    names = [e.name for e in CORRUPTION_REGISTRY if e.info["extra"] == extra]
    return tuple(sorted(names, key=lambda n: FAMILIES.index(corruption_info(n)["family"])))
