"""Re-estimate a patched checkpoint's BatchNorm statistics on (corrupted) data, as the RWS
reference does for ResNets after patching (``rws apply --recalibrate-bn DATA``): on a file
(:func:`recalibrate_file`) or as the second half of one atomic apply (:func:`apply_and_recalibrate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Literal

import torch

from rws.data import load_dataset
from rws.data.severity import severity_range
from rws.errors import CheckpointError, UsageError
from rws.io.atomic import atomic_output
from rws.io.checkpoint import Source, check_output_path, open_checkpoint
from rws.io.safetensors_write import save_tensors
from rws.models import load_model
from rws.patching.files import FileResult, apply_file
from rws.patching.patch import Patch, as_items
from rws.runtime.seed import generator
from rws.training.bn import recalibrate_bn

RECALIBRATED_KEY = "rws.recalibrated_bn"
BN_MIXES = ("replace", "alpha")
BnMix = Literal["replace", "alpha"]

__all__ = ["BN_MIXES", "RECALIBRATED_KEY", "apply_and_recalibrate", "mix_alpha", "recalibrate_file"]


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
    mix: float | None = None,
) -> dict[str, object]:
    """Load ``checkpoint`` into ``arch``, re-estimate BatchNorm running statistics on the training
    split of ``data`` (corrupted by ``corruptions`` at ``severity`` when given), and write the result
    (atomically, keeping the input's metadata, e.g. the applied-patch stack) to ``output``.

    ``label`` names the checkpoint in error messages (when it is a temporary file); ``mix = α``
    keeps ``(1 − α)·old + α·new`` statistics (:func:`rws.training.bn.recalibrate_bn`).

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
    g = generator(seed)
    recalibrate_bn(model, dataset.train.x, corruption=list(corruptions) or None,
                   severity=severity if corruptions else None, generator=g, mix=mix)  # fmt: skip
    info: dict[str, object] = {"data": data, "corruptions": list(corruptions), "seed": seed}
    if mix is not None:
        info["mix"] = mix
    if corruptions:
        info["severity"] = list(severity)
    metadata[RECALIBRATED_KEY] = json.dumps(info)
    save_tensors(output, model.state_dict(), metadata)
    return info


def apply_and_recalibrate(
    base: Source,
    patches: Sequence[Patch | tuple[Patch, float]],
    output: str | os.PathLike,
    *,
    arch: str | None,
    data: str = "digits",
    severity: int | tuple[int, int] = (5, 5),
    seed: int = 0,
    force: bool = False,
    clamp_var: bool = False,
    bn_mix: BnMix = "replace",
) -> tuple[FileResult, dict[str, object]]:
    """Apply ``patches`` to ``base``, then re-estimate its BatchNorm statistics: one atomic output.

    The training images of ``data`` are corrupted by the patches' ``corruption`` tags (when they
    have any) at ``severity`` (:func:`recalibrate_file`). Both steps run on a temporary file
    renamed into place only when both succeed: on any error nothing is written.

    Args:
        base: the checkpoint to patch.
        patches: patches, or ``(patch, α)`` pairs.
        output: the ``.safetensors`` file to write (one file, from a checkpoint folder too).
        arch: the model the checkpoint loads into (required; None is a usage error).
        data, severity, seed: the recalibration data, the severity (or range) of its
            corruptions, and the seed of their draws.
        force, clamp_var: as for :func:`rws.patching.files.apply_file`.
        bn_mix: ``replace`` keeps the re-estimated statistics; ``alpha`` mixes them with the
            patched ones, ``(1 − α)·patched + α·new``, α being the patches' :func:`mix_alpha`
            (the reference's rule for ResNets).

    Returns:
        ``(result, info)``: the apply result (its ``output`` is ``output``) and what was recorded
        under ``rws.recalibrated_bn``.

    Raises:
        UsageError: no ``arch``, a bad severity or ``bn_mix``, or an architecture without
            BatchNorm.
        CheckpointError: the patched checkpoint does not fit ``arch`` (named ``BASE + patches``).

    Example:
        >>> res, info = apply_and_recalibrate("clean.safetensors", [fog], "out.safetensors",
        ...                                   arch="resnet20", data="cifar10:data")  # doctest: +SKIP
    """
    if arch is None:
        raise UsageError("--recalibrate-bn needs --arch (the model to run the data through)")
    if bn_mix not in BN_MIXES:
        raise UsageError(f"--bn-mix {bn_mix!r}: choose one of {', '.join(BN_MIXES)}")
    severity = severity_range(severity)
    items = as_items(patches)
    mix = mix_alpha(items) if bn_mix == "alpha" else None
    check_output_path(output, [base, *[p.source for p, _ in items if p.source]])
    tags = [p.tags["corruption"] for p, _ in items if "corruption" in p.tags]
    with atomic_output(output) as tmp:  # both steps or nothing
        res = apply_file(base, items, tmp, force=force, clamp_var=clamp_var, folder=False)
        info = recalibrate_file(tmp, tmp, arch=arch, data=data, corruptions=tags,
                                severity=severity, seed=seed, label=f"{base} + patches",
                                mix=mix)  # fmt: skip
    return dataclasses.replace(res, output=os.fspath(output)), info


def mix_alpha(patches: Sequence[Patch | tuple[Patch, float]]) -> float:
    """The α that ``bn_mix="alpha"`` mixes statistics by: the mean of the patches' effective αs
    (``α·scale``; one patch: its α), clipped to [0, 1] (the reference replaces at α ≥ 1).

    Example:
        >>> mix_alpha([(patch, 0.5)])  # doctest: +SKIP
        0.5
    """
    alphas = [a * p.scale for p, a in as_items(patches)]
    return min(1.0, max(0.0, sum(alphas) / len(alphas))) if alphas else 1.0
