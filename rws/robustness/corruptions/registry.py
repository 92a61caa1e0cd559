"""The corruption registry: ``register_corruption``, ``get_corruption``, ``list_corruptions``.

A corruption kernel has the signature ``f(x, c, *, generator) -> Tensor``: ``x`` is a batch
``(N, 3, H, W)`` of float images in [0, 1] (validated, on its device), ``c`` is one row of a
severity table in :mod:`rws.robustness.corruptions.params`, and ``generator`` is the
``torch.Generator`` every random draw must use. Kernels may return values outside [0, 1]: the caller
clamps.

A table may swap a corruption's kernel for a variant (:func:`register_variant`, e.g. the
``imagecorruptions`` package's pixelate with NEAREST upsampling); :func:`table_kernel` picks it.
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

# (table, name) → (kernel, approximate): the kernels a severity table uses instead of the default
VARIANTS: dict[tuple[str, str], tuple[Kernel, str]] = {}


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


def register_variant(name: str, *, table: str, approximate: str = "") -> Callable[[Kernel], Kernel]:
    """Use the decorated kernel for corruption ``name`` when the severity table is ``table``.

    Args:
        name: A registered corruption (registered before its variants).
        table: The severity table (``"imagecorruptions"``) whose reference the variant follows.
        approximate: Empty when the variant follows that table's reference, else how it departs.

    Returns:
        The decorator (the kernel is returned unchanged); a second variant for the same table and
        corruption raises ``ValueError`` (a programming bug).
    """
    CORRUPTION_REGISTRY.entry(name)  # UnknownNameError for a typo

    def register(kernel: Kernel) -> Kernel:
        if (table, name) in VARIANTS:
            raise ValueError(f"corruption {name!r} already has a variant for table {table!r}")
        VARIANTS[(table, name)] = (kernel, approximate)
        return kernel

    return register


def table_kernel(name: str, table: str) -> Kernel:
    """The kernel of ``name`` under a severity table: its variant there, else the default."""
    variant = VARIANTS.get((table, name))
    return variant[0] if variant else get_corruption(name)


def get_corruption(name: str) -> Kernel:
    """The kernel registered under ``name``; raises ``UnknownNameError`` listing the choices."""
    return CORRUPTION_REGISTRY.get(name)


def corruption_info(name: str) -> dict[str, Any]:
    """``family``, ``extra``, ``random`` and ``approximate`` of a registered corruption."""
    return dict(CORRUPTION_REGISTRY.entry(name).info)


def kernel_fidelity(name: str, table: str | None = None) -> str:
    """``"reference"`` when the kernel follows the reference, else ``"approximate"``; the reason
    is :func:`fidelity_note`. With ``table``, the kernel that table runs (:func:`table_kernel`).

    Example:
        >>> kernel_fidelity("fog"), kernel_fidelity("frost")
        ('reference', 'approximate')
        >>> kernel_fidelity("motion_blur"), kernel_fidelity("motion_blur", "imagecorruptions")
        ('approximate', 'reference')
    """
    return "approximate" if fidelity_note(name, table) else "reference"


def fidelity_note(name: str, table: str | None = None) -> str:
    """How the kernel (under ``table``: its variant there, if any) departs from its reference;
    empty when it follows it."""
    variant = VARIANTS.get((table, name)) if table else None
    return variant[1] if variant else str(corruption_info(name).get("approximate") or "")


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
