"""Re-estimate a patched checkpoint's BatchNorm statistics on (corrupted) data, as the RWS
reference does for ResNets after patching (``rws apply --recalibrate-bn DATA``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from rws.data import load_dataset
from rws.errors import CheckpointError, UsageError
from rws.io.checkpoint import open_checkpoint
from rws.io.safetensors_io import save_tensors
from rws.models import load_model
from rws.training.train import recalibrate_bn

RECALIBRATED_KEY = "rws.recalibrated_bn"


def recalibrate_file(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    arch: str,
    data: str = "digits",
    corruptions: Sequence[str] = (),
    severity: tuple[int, int] = (5, 5),
    seed: int = 0,
    label: str | None = None,
) -> dict[str, object]:
    """Load ``checkpoint`` into ``arch``, re-estimate BatchNorm running statistics on the training
    split of ``data`` (corrupted by ``corruptions`` at ``severity`` when given), and write the result
    (atomically, keeping the input's metadata, e.g. the applied-patch stack) to ``output``.

    ``label`` names the checkpoint in error messages (when it is a temporary file).

    Returns:
        What was recorded under ``rws.recalibrated_bn`` in the output's metadata.

    Raises:
        UsageError: the architecture has no BatchNorm layer.
    """
    dataset = load_dataset(data)
    try:
        model = load_model(arch, checkpoint, dataset.num_classes)
    except CheckpointError as err:
        raise CheckpointError(label or err.path, err.reason) from None
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UsageError(f"--recalibrate-bn: {arch} has no BatchNorm layer to recalibrate")
    with open_checkpoint(checkpoint) as ck:
        metadata = dict(ck.metadata)
    g = torch.Generator().manual_seed(seed)
    recalibrate_bn(model, dataset.train.x, corruption=list(corruptions) or None,
                   severity=severity if corruptions else None, generator=g)  # fmt: skip
    info: dict[str, object] = {"data": data, "corruptions": list(corruptions), "seed": seed}
    if corruptions:
        info["severity"] = list(severity)
    metadata[RECALIBRATED_KEY] = json.dumps(info)
    save_tensors(output, model.state_dict(), metadata)
    return info
