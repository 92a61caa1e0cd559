"""Cosine similarity of signatures, overall and per layer.

Signatures are compared on the tensors they all share, flattened and concatenated, with each
patch's ``scale`` applied (a negated patch points the other way). BatchNorm running statistics
are left out by default (``running_stats=True`` counts them): on BN models they are 59–66 % of a
signature's squared norm, so with them a comparison mostly measures running statistics.
Matrices are plain nested tuples of floats, so results serialise to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rws.errors import IntegrityError, UsageError
from rws.patching.patch import Patch
from rws.patching.selection import group_layers, is_running_stat

Matrix = tuple[tuple[float, ...], ...]


def shared_tensors(patches: Sequence[Patch]) -> list[str]:
    """Tensor names every patch holds, in the first patch's (depth) order.

    Raises:
        IntegrityError: the patches share no tensor, or a shared tensor's shapes differ.
    """
    first = patches[0]
    names = first.names()
    for p in patches[1:]:
        kept = [n for n in names if n in p.tensors]
        if not kept:
            example = f" (e.g. {names[0]!r})" if names else ""
            raise IntegrityError(
                f"signature {p.label} shares no tensor with {first.label}{example}; "
                "extract signatures with the same layer selection (--shallow K)"
            )
        for n in kept:
            if p.tensors[n].shape != first.tensors[n].shape:
                raise IntegrityError(
                    f"tensor {n!r}: {first.label} has shape {list(first.tensors[n].shape)} but "
                    f"{p.label} has {list(p.tensors[n].shape)}; signatures of different "
                    "architectures cannot be compared"
                )
        names = kept
    return names


def compared_tensors(patches: Sequence[Patch], *, running_stats: bool = False) -> list[str]:
    """:func:`shared_tensors`, without running statistics unless ``running_stats``.

    Raises:
        IntegrityError: as :func:`shared_tensors`, or only running statistics are shared.
    """
    names = shared_tensors(patches)
    if running_stats:
        return names
    kept = [n for n in names if not is_running_stat(n)]
    if not kept:
        raise IntegrityError(
            "the signatures share only BatchNorm running statistics; compare them with "
            "--with-running-stats (running_stats=True)"
        )
    return kept


def _gram(patches: Sequence[Patch], name: str) -> np.ndarray:
    x = torch.stack([p.delta(name).flatten().to(torch.float64) for p in patches])  # (P, numel)
    return (x @ x.T).numpy()


def _cosine(gram: np.ndarray) -> Matrix:
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    denom = np.outer(norms, norms)
    cos = np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)
    return tuple(tuple(float(v) for v in row) for row in np.clip(cos, -1.0, 1.0))


@dataclass(frozen=True)
class SimilarityResult:
    """Cosine similarities between signatures.

    Attributes:
        labels: one label per patch (``patch.label``), the order of every matrix's rows.
        tensors: the shared tensors compared, in depth order.
        overall: cosine similarity of the concatenated shared tensors.
        layers: per layer (depth order), the cosine similarity of that layer's tensors; empty
            unless ``per_layer``.
    """

    labels: tuple[str, ...]
    tensors: tuple[str, ...]
    overall: Matrix
    layers: dict[str, Matrix] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "labels": list(self.labels),
            "tensors": list(self.tensors),
            "overall": [list(r) for r in self.overall],
            "layers": {k: [list(r) for r in m] for k, m in self.layers.items()},
        }


def similarity(
    patches: Sequence[Patch], *, per_layer: bool = True, running_stats: bool = False
) -> SimilarityResult:
    """Cosine-similarity matrices of signatures, overall and per layer.

    Args:
        patches: two or more patches (e.g. RWS signatures of one clean model).
        per_layer: also compute one matrix per layer (:func:`rws.patching.selection.group_layers`).
        running_stats: count BatchNorm running statistics in (left out by default).

    Returns:
        The matrices, rows and columns in the order of ``patches``.

    Raises:
        UsageError: fewer than two patches.
        IntegrityError: the patches share no tensor, or a shared tensor's shapes differ.

    Example:
        >>> fogs = [rws.load("fog-1.rws.safetensors"), rws.load("fog-2.rws.safetensors")]  # doctest: +SKIP
        >>> res = similarity(fogs)  # doctest: +SKIP
        >>> res.overall[0][1]  # doctest: +SKIP
        0.95
    """
    patches = list(patches)
    if len(patches) < 2:
        raise UsageError("similarity needs at least two patches")
    names = compared_tensors(patches, running_stats=running_stats)
    grams = {n: _gram(patches, n) for n in names}
    layers: dict[str, Matrix] = {}
    if per_layer:
        for layer in group_layers(names, lambda n: patches[0].tensors[n].shape):
            layers[layer.name] = _cosine(sum(grams[n] for n in layer.tensors))
    return SimilarityResult(
        labels=tuple(p.label for p in patches),
        tensors=tuple(names),
        overall=_cosine(sum(grams.values())),
        layers=layers,
    )
