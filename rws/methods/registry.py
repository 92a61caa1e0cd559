"""Method registry: each way of making a delta registers a :class:`Method`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rws.io.checkpoint import Checkpoint
from rws.registry import Registry

DeltaFn = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A way of making a delta.

    ``prepare(base, tuned, **options)`` checks the inputs and returns ``(delta_of, provenance)``:
    a function giving the float delta of one tensor name, and method facts for the metadata.
    """

    name: str
    kind: str
    prepare: Callable[..., tuple[DeltaFn, dict[str, Any]]]


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, *, kind: str, summary: str = "", url: str = ""
) -> Callable[[Callable[..., tuple[DeltaFn, dict[str, Any]]]], Method]:
    """Register ``prepare(base: Checkpoint, tuned: Checkpoint, **options)`` as a method."""

    def deco(prepare: Callable[..., tuple[DeltaFn, dict[str, Any]]]) -> Method:
        doc = summary or (prepare.__doc__ or "").strip().split("\n")[0]
        return METHODS.add(name, Method(name, kind, prepare), summary=doc, url=url)

    return deco


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


__all__ = ["METHODS", "Checkpoint", "DeltaFn", "Method", "list_methods", "register_method"]
