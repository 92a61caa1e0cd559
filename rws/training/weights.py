"""A run's weights: the seeded initialisation and the fine-tuned result saved with its provenance."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from rws._version import __version__
from rws.data.types import ImageDataset
from rws.io.checkpoint import input_paths
from rws.io.hashing import files_sha256
from rws.io.safetensors_write import save_tensors
from rws.models import resolve_model
from rws.training.config import TrainResult

RESULT_KEY = "rws.finetune"

__all__ = ["RESULT_KEY", "init_model", "save_result"]


def init_model(arch: str, num_classes: int, *, seed: int) -> nn.Module:
    """``arch`` with its initialisation drawn from ``seed`` (the global RNG is left untouched).

    Example:
        >>> model = init_model("small-cnn", 10, seed=0)  # doctest: +SKIP
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return resolve_model(arch, num_classes=num_classes)


def save_result(
    path: str | os.PathLike,
    result: TrainResult,
    *,
    arch: str,
    data: ImageDataset,
    source: str | os.PathLike | None = None,
    init_seed: int | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write the fine-tuned weights as safetensors (atomically) with their provenance.

    The metadata key ``rws.finetune`` holds JSON: tool version, ``arch``, ``data`` (the dataset's
    name), ``num_classes``, ``corruptions``, ``severity``, ``epochs``, ``seed``, ``source``
    (``{"path", "sha256"}`` of the starting checkpoint, or None), ``init_seed`` (the
    :func:`init_model` seed when there was no source), the config, the best epoch and the
    history, without wall times or resumption, so that the same run (same thread count) writes
    a byte-identical file, interrupted or not. ``metadata`` adds other string entries.

    Returns:
        The metadata written.
    """
    src = None
    if source is not None:
        src = {"path": os.fspath(source), "sha256": files_sha256(input_paths(source))}
    c = result.config
    meta = {
        "tool": f"rws {__version__}", "arch": arch, "data": data.name,
        "num_classes": data.num_classes, "corruptions": list(c.corruptions),
        "severity": list(c.severity), "epochs": c.epochs, "seed": c.seed, "source": src,
        "init_seed": init_seed, **result.to_dict(),
    }  # fmt: skip
    del meta["resumed_epochs"]  # how the run went, not what it made
    for h in meta["history"]:
        del h["seconds"]
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    save_tensors(path, state, {**(metadata or {}), RESULT_KEY: json.dumps(meta)})
    return meta
