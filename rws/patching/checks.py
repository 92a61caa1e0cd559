"""Checks around patch arithmetic: shapes and dtypes before, base fingerprints before applying
(:func:`check_base`; the whole base's sha256: :func:`check_whole_base`) and after removing
(:func:`check_restored`), and the report that counts them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rws.errors import (
    BaseDtypeMismatchError,
    BaseMismatchError,
    IntegrityError,
    NoBaseFingerprintError,
    ShapeMismatchError,
    WholeBaseMismatchError,
)
from rws.io.checkpoint import is_integer_dtype
from rws.io.hashing import tensor_sha256
from rws.patching.patch import Patch
from rws.patching.tensor import base_digest, fingerprint_matches
from rws.patching.undo import TensorUndo, Undo

logger = logging.getLogger(__name__)

Parts = Sequence[tuple[Patch, float]]


@dataclass
class PatchReport:
    """What an apply or remove did: tensors touched, fingerprint checks, warnings."""

    touched: int = 0
    checked: int = 0  # tensors whose base fingerprint was compared
    exact: int = 0  # of those, how many matched bit for bit
    mismatched: list[str] = field(default_factory=list)  # apply: forced past a fingerprint
    inexact: list[str] = field(default_factory=list)  # remove: not restored bit for bit
    warnings: list[str] = field(default_factory=list)
    # apply: tensors in another dtype than the patch's base that match its fingerprint cast back
    recast: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # no base fingerprint to compare with
    operating_point: dict[str, Any] | None = None  # rws.apply(scale="auto"): the search
    undo: Undo | None = None  # apply(undo=True): the bits rounding dropped, for an exact remove
    # apply: the full sha256 of each tensor that matched its fingerprint in its own dtype
    base_sha256: dict[str, str] = field(default_factory=dict)
    whole_base: int = 0  # apply: patches whose whole-base sha256 was checked and matched

    @property
    def unverified(self) -> list[str]:
        """Remove: the tensors not proven bit-exact (no fingerprint, or it did not match)."""
        return self.inexact + self.unchecked


def check_target(
    where: str,
    name: str,
    parts: Sequence[tuple[Patch, float]],
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> None:
    """Shape and dtype checks for one tensor before any arithmetic."""
    for p, _ in parts:
        t = p.tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ShapeMismatchError(name, t.shape, shape)
    if is_integer_dtype(dtype):
        raise IntegrityError(
            f"{where}: tensor {name!r} is an integer buffer ({dtype}); not patched"
        )


def check_base(
    where: str,
    name: str,
    found: str,
    parts: Sequence[tuple[Patch, float]],
    report: PatchReport,
    force: bool,
    *,
    target: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Compare a tensor's sha256 with the base fingerprint each patch recorded for ``name``.

    Given the tensor (``target``) in another dtype than a patch's base, it also matches when cast
    back to the base's dtype losslessly: the same values (counted in ``report.recast``). Given
    only its ``dtype``, a mismatch across dtypes says so. No fingerprint at all is refused
    unless ``force`` (then counted in ``report.unchecked``).
    """
    expected = {(p.tensors[name].base_sha256, p.tensors[name].dtype) for p, _ in parts}
    expected = {(e, d) for e, d in expected if e is not None}
    if not expected:
        require_fingerprints(where, {name: parts}, force)
        report.unchecked.append(name)
        return
    report.checked += 1
    dtype = target.dtype if target is not None else dtype
    have = str(dtype).removeprefix("torch.") if dtype is not None else None
    bad, recast = [], False
    for sha, base_dtype in sorted(expected):
        if fingerprint_matches(sha, found):  # a full sha256 or its first 64 bits (format 3)
            continue
        if (
            target is not None
            and base_dtype != have
            and fingerprint_matches(sha, _cast_sha256(target, base_dtype) or "")
        ):
            recast = True
            continue
        bad.append((sha, base_dtype))
    if not bad:
        report.exact += 1
        if recast:
            report.recast.append(name)
        elif len(found) == 64:
            report.base_sha256[name] = found
        return
    if not force:
        sha, base_dtype = bad[0]
        if have is not None and base_dtype != have:
            raise BaseDtypeMismatchError(where, name, sha, found, dtype=have, base_dtype=base_dtype)
        raise BaseMismatchError(where, name, sha, found)
    report.mismatched.append(name)


def check_whole_base(
    where: str, patches: Iterable[Patch], report: PatchReport, force: bool
) -> None:
    """Compare each patch's whole-base sha256 (format 3, ``base["sha256"]``) with the full sha256s
    of the tensors that matched its per-tensor 64-bit fingerprints; checked when every tensor of
    the patch matched in its own dtype (a recast or forced tensor leaves it unchecked).

    Raises:
        WholeBaseMismatchError: they differ (unless ``force``: then a warning in ``report``).
    """
    seen: set[int] = set()  # by identity: a patch's content fingerprint would read all its bytes
    for p in patches:
        expected = p.base.get("sha256")
        if not isinstance(expected, str) or id(p) in seen:
            continue
        seen.add(id(p))
        names = p.names()
        if not names or not all(n in report.base_sha256 for n in names):
            continue
        found = base_digest({n: report.base_sha256[n] for n in names})
        if found == expected:
            report.whole_base += 1
            continue
        err = WholeBaseMismatchError(where, p.label, expected, found)
        if not force:
            raise err
        report.warnings.append(str(err))
        logger.warning("%s", err)


def require_fingerprints(where: str, plan: Mapping[str, Parts], force: bool) -> None:
    """Refuse (unless ``force``) a tensor none of whose patches records a base fingerprint: it
    would apply to any base unchecked."""
    if force:
        return
    for name, parts in plan.items():
        if not any(p.tensors[name].base_sha256 for p, _ in parts):
            labels = ", ".join(p.label for p, _ in parts)
            raise NoBaseFingerprintError(where, name, labels)


def _cast_sha256(t: torch.Tensor, dtype: str) -> str | None:
    """sha256 of ``t`` cast to ``dtype``, or None when the cast loses values (no exact check)."""
    to = getattr(torch, dtype, None)
    if not isinstance(to, torch.dtype):
        return None
    cast = t.to(to)
    if not torch.equal(cast.to(t.dtype), t):
        return None
    return tensor_sha256(cast)


def check_result(name: str, out: torch.Tensor, clamp_var: bool) -> torch.Tensor:
    """BatchNorm running-variance check on a patched tensor (clamped at 0 on request)."""
    if name.endswith("running_var") and bool((out <= 0).any()):
        if not clamp_var:
            raise IntegrityError(
                f"tensor {name!r}: patching makes a running variance <= 0; "
                "pass --clamp-var (clamp_var=True) to clamp it at 0"
            )
        out = out.clamp_min(0)
    return out


def check_restored(
    name: str,
    out: torch.Tensor,
    parts: Sequence[tuple[Patch, float]],
    report: PatchReport,
    correction: TensorUndo | None = None,
) -> None:
    """After a removal: does the tensor hash to the base fingerprint again (with an undo
    correction: the fingerprint of the very tensor the apply read)?"""
    expected = {p.tensors[name].base_sha256 for p, _ in parts} - {None}
    if correction is not None:
        expected = {correction.base_sha256}
    if not expected:
        report.unchecked.append(name)
        return
    report.checked += 1
    found = tensor_sha256(out)
    if any(fingerprint_matches(e, found) for e in expected):
        report.exact += 1
    else:
        report.inexact.append(name)
