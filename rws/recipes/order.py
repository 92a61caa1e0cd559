"""The depth order of an extraction where only files are given: the forward pass of a named
architecture (``--arch``, ``--order-from ARCH``, or the arch a checkpoint records), or an order
file (``--order-from FILE``); see :mod:`rws.patching.order`."""

from __future__ import annotations

import json
import logging
import os

from torch import nn

from rws.errors import RwsError
from rws.io.checkpoint import PICKLE_SUFFIXES, Checkpoint, Source, open_checkpoint
from rws.models import resolve_model
from rws.patching.order import DepthOrder, OrderSpec, forward_order

__all__ = ["arch_order", "extraction_order", "recorded_arch"]

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".json", ".safetensors", *PICKLE_SUFFIXES)


def arch_order(arch: str, *, source: str | None = None) -> DepthOrder:
    """The depth order of a model spec (``resnet20``, ``pkg.module:factory``, ``timm:NAME``): the
    forward pass of a freshly built one on a guessed input
    (:func:`rws.patching.order.example_inputs`).

    Raises:
        UnknownNameError: an unknown model name.
        UsageError: a factory that cannot be built, or a forward pass that fails.
    """
    return forward_order(resolve_model(arch), source=source or f"forward pass of {arch}")


def recorded_arch(source: Source) -> str | None:
    """The architecture a checkpoint file records (``rws finetune``'s ``rws.finetune`` metadata or
    an ``arch`` entry: a safetensors metadata key, or a string beside the weights in a training
    checkpoint such as timm's), if any; in-memory sources record none."""
    if not isinstance(source, str | os.PathLike | Checkpoint):
        return None
    try:
        meta = open_checkpoint(source).metadata or {}
    except RwsError:
        return None
    try:
        trained = json.loads(meta.get("rws.finetune") or "{}")
    except ValueError:
        trained = {}
    arch = trained.get("arch") if isinstance(trained, dict) else None
    arch = arch or meta.get("arch")
    return arch if isinstance(arch, str) and arch else None


def extraction_order(
    spec: OrderSpec, base: Source, tuned: Source, arch: str | None = None
) -> OrderSpec:
    """What :func:`rws.methods.extract.extract` should take its depth order from.

    ``spec`` as given, with a string that names no file and looks like no file taken as a model
    spec (its forward pass); without ``spec``: None when ``base`` or ``tuned`` is a module (the
    extraction runs its forward pass), else the forward pass of ``arch``, else of the arch that
    ``tuned`` or ``base`` records (one that cannot be built or whose names are not the base's is
    skipped with a warning), else
    None (storage order, or a guess from sorted names).

    Raises:
        UnknownNameError, UsageError: ``spec`` or ``arch`` names a model that cannot be built or run.
    """
    if isinstance(spec, str) and not _is_file_like(spec):
        return arch_order(spec)
    if spec is not None or any(isinstance(s, nn.Module) for s in (base, tuned)):
        return spec
    if arch is not None:
        return arch_order(arch)
    for src in (tuned, base):
        recorded = recorded_arch(src)
        if recorded is None:
            continue
        label = f"forward pass of {recorded} (the arch {_name(src)} records)"
        try:
            order = arch_order(recorded, source=label)
        except RwsError as exc:
            logger.warning(
                "%s records arch %s, which gives no order: %s", _name(src), recorded, exc
            )
            continue
        if set(order.names) & set(open_checkpoint(base).keys()):
            return order
        logger.warning("%s records arch %s, whose names are not the base's", _name(src), recorded)
    return None


def _is_file_like(spec: str) -> bool:
    return (
        os.path.exists(spec)
        or spec.lower().endswith(FILE_SUFFIXES)
        or os.sep in spec
        or spec.startswith("hf://")
    )


def _name(src: Source) -> str:
    path = src.path if isinstance(src, Checkpoint) else os.fspath(src)  # type: ignore[arg-type]
    return os.path.basename(path)
