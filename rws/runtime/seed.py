"""Seeding: derived seeds and seeded generators (randomness arrives as a seed or a generator;
nothing here touches the global RNGs except :func:`forked_rng`, which restores them)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Literal

import torch

from rws.errors import UsageError

GeneratorPlace = Literal["cpu", "device"]
GENERATOR_PLACES: tuple[GeneratorPlace, ...] = ("cpu", "device")


def derived_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (sha256 of ``"p0/p1/…"``): independent streams for
    the same user seed, e.g. ``derived_seed(seed, "val")``."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def generator_device(place: GeneratorPlace, device: str | torch.device) -> torch.device:
    """Where the generator of a run on ``device`` lives: ``"cpu"`` always on the CPU (the same
    draws whatever the device, for cross-device agreement), ``"device"`` on ``device`` itself (on a
    GPU the draws are made there; reproducible for the same device type and seed).

    Raises:
        UsageError: ``place`` is neither ``"cpu"`` nor ``"device"``.

    Example:
        >>> generator_device("device", "cuda:1"), generator_device("cpu", "cuda:1")
        (device(type='cuda', index=1), device(type='cpu'))
    """
    if place not in GENERATOR_PLACES:
        raise UsageError(f"generator must be 'cpu' or 'device', not {place!r}")
    return torch.device("cpu") if place == "cpu" else torch.device(device)


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the global RNGs (dropout) of the CPU and ``device`` for a block; restore them after."""
    cuda = device.type == "cuda"
    index = (
        (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    )
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
