"""Seeding: derived seeds and seeded generators (randomness arrives as a seed or a generator;
nothing here touches the global RNGs except :func:`forked_rng`, which restores them)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derived_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (sha256 of ``"p0/p1/…"``): independent streams for
    the same user seed, e.g. ``derived_seed(seed, "val")``."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


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
