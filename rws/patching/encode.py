"""Deltas in, :class:`~rws.patching.tensor.TensorDelta` out: the encoding step of extraction and
composition (codec plan, sparsity, fingerprints, norms), and TIES-style sign election."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import torch

from rws.errors import NonFiniteError, UsageError
from rws.io.hashing import tensor_sha256
from rws.patching import codecs
from rws.patching.codec_map import CodecMapSpec, CodecPlan, encode_tensor
from rws.patching.format import SEP
from rws.patching.sparsify import check_density, check_method
from rws.patching.tensor import TensorDelta, compact


def check_name(name: str) -> str:
    """A tensor name a patch can store: without ``::``, the format's separator.

    Raises:
        UsageError: the name holds ``::``.
    """
    if SEP in name:
        raise UsageError(
            f"tensor {name!r}: its name holds {SEP!r}, the patch format's separator; "
            "--exclude it (or rename it in the checkpoint)"
        )
    return name


def encode_deltas(
    deltas: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
    *,
    codec: str = "int8",
    blocksize: int = codecs.DEFAULT_BLOCKSIZE,
    fixed: Collection[str] = (),
    codec_map: CodecMapSpec = None,
    sparsify: str | None = None,
    density: float = 1.0,
    seed: int = 0,
) -> tuple[dict[str, TensorDelta], list[str]]:
    """Encode ``(name, delta, base)`` triples; exactly-zero deltas are skipped and listed.
    Tensors named in ``fixed`` are marked fixed (applied whatever the scale; see
    :mod:`rws.patching.tensor`). ``codec`` stores the large tensors, small ones stay in high
    precision, ``codec_map`` overrides (:mod:`rws.patching.codec_map`); ``sparsify``, ``density``
    and ``seed`` sparsify the large ones (:mod:`rws.patching.sparsify`).

    Raises:
        NonFiniteError: a delta holds NaN or Inf.
        UsageError: a ``::`` in a name, an integer tensor, a ``codec_map`` glob matching none of
            the tensors, a codec that cannot hold a delta, a bad sparsifier or density.
    """
    plan = CodecPlan.of(codec, codec_map)
    if sparsify is not None:
        check_method(sparsify)
        check_density(density)
    tensors: dict[str, TensorDelta] = {}
    skipped: list[str] = []
    seen: dict[str, tuple[int, ...]] = {}
    for name, delta, base in deltas:
        seen[check_name(name)] = tuple(base.shape)
        d32 = delta.detach().to(torch.float32)
        if not torch.isfinite(d32).all():
            raise NonFiniteError(name, "the delta")
        if not d32.any():
            skipped.append(name)
            continue
        tensors[name] = TensorDelta(
            name=name,
            shape=tuple(base.shape),
            dtype=str(base.dtype).removeprefix("torch."),
            encoded=encode_tensor(
                name,
                d32,
                base,
                plan,
                blocksize=blocksize,
                sparsify=sparsify,
                density=density,
                seed=seed,
            ),
            base_sha256=tensor_sha256(base),
            delta_l2=compact(float(d32.double().norm())),  # float64: no overflow to inf
            base_l2=compact(float(base.detach().double().norm())),
            fixed=name in fixed,
        )
    plan.check(list(seen), seen)
    return tensors, skipped


def elect_signs(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES-style merge of weighted deltas: per element, the sign of their sum, and the mean of
    the terms of that sign (0 where none).

    Example:
        >>> elect_signs([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])]).tolist()
        [2.0, -2.0]
    """
    t = torch.stack([x.to(torch.float32) for x in terms])  # (P, ...)
    elected = torch.sign(t.sum(0))
    agree = (torch.sign(t) == elected) & (t != 0)
    return (t * agree).sum(0) / agree.sum(0).clamp_min(1)
