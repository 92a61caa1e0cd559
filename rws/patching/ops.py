"""Apply and remove patches on live modules and state dicts (files: :mod:`rws.patching.files`).

``w' = w + Σ αᵢ·scaleᵢ·decode(δᵢ)`` (a fixed tensor, :mod:`rws.patching.tensor`: the mean of
the replacements, whatever the scales), summed and added in float32 (float64 for a float64 base), cast
back to ``w``'s dtype (:func:`~rws.patching.arith.add_delta`). Removal is plain subtraction of the
same sum, ``cast_w(w' − D)`` (:func:`~rws.patching.arith.sub_delta`): it restores each element to
within one rounding, and bit for bit wherever adding ``D`` dropped no low bits of ``w`` (most
elements; :mod:`rws.patching.arith` says why no formula recovers the others). The base
fingerprints recorded in the patch then tell which restored tensors are exact.

A module wrapped by ``torch.compile``, ``DataParallel`` or DDP is patched through the model inside
(:func:`~rws.io.checkpoint.unwrap_module`), in place in its parameters; a state dict whose keys
all carry ``module.`` / ``_orig_mod.`` prefixes is matched under them. A target in another dtype
than the patch's base passes the fingerprint check when it holds the base's values (cast back
losslessly); otherwise the error names both dtypes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rws.errors import (
    BaseDtypeMismatchError,
    BaseMismatchError,
    IntegrityError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
)
from rws.io.checkpoint import is_integer_dtype
from rws.io.hashing import tensor_sha256
from rws.io.unwrap import strip_prefixes, unwrap_module
from rws.patching.arith import add_delta, all_finite, compute_dtype, sub_delta
from rws.patching.patch import Patch, as_items
from rws.patching.tensor import part_weights

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]


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
    operating_point: dict[str, Any] | None = None  # rws.apply(scale="auto"): the search


def group_by_tensor(
    items: Sequence[tuple[Patch, float]], scale: float = 1.0
) -> dict[str, list[tuple[Patch, float]]]:
    """Tensor name → the (patch, effective α) pairs touching it, in order of first appearance.

    For a fixed tensor the α is its weight in the mean of the replacements
    (:func:`rws.patching.tensor.fixed_weights`), whatever the scales.

    Raises:
        UsageError: a tensor fixed in one patch and scaled in another.
    """
    out: dict[str, list[tuple[Patch, float]]] = {}
    for p, alpha in items:
        for name in p.tensors:
            out.setdefault(name, []).append((p, alpha * p.scale * scale))
    for name, parts in out.items():
        fixed = [p.tensors[name].fixed for p, _ in parts]
        if any(fixed):
            weights = part_weights(name, fixed, [a for _, a in parts])
            out[name] = [(p, w) for (p, _), w in zip(parts, weights, strict=True)]
    return out


def total_delta(
    name: str, parts: Sequence[tuple[Patch, float]], dtype: torch.dtype
) -> torch.Tensor:
    """``Σ αᵢ·decode(δᵢ)`` for one tensor, in the compute dtype of ``dtype``."""
    cd = compute_dtype(dtype)
    acc: torch.Tensor | None = None
    for p, alpha in parts:
        d = p.tensors[name].decode().to(cd)
        if alpha != 1.0:
            d.mul_(alpha)
        acc = d if acc is None else acc.add_(d)
    assert acc is not None
    return acc


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
    only its ``dtype``, a mismatch across dtypes says so.
    """
    expected = {(p.tensors[name].base_sha256, p.tensors[name].dtype) for p, _ in parts}
    expected = {(e, d) for e, d in expected if e is not None}
    if not expected:
        return
    report.checked += 1
    dtype = target.dtype if target is not None else dtype
    have = str(dtype).removeprefix("torch.") if dtype is not None else None
    bad, recast = [], False
    for sha, base_dtype in sorted(expected):
        if sha == found:
            continue
        if target is not None and base_dtype != have and _cast_sha256(target, base_dtype) == sha:
            recast = True
            continue
        bad.append((sha, base_dtype))
    if not bad:
        report.exact += 1
        if recast:
            report.recast.append(name)
        return
    if not force:
        sha, base_dtype = bad[0]
        if have is not None and base_dtype != have:
            raise BaseDtypeMismatchError(where, name, sha, found, dtype=have, base_dtype=base_dtype)
        raise BaseMismatchError(where, name, sha, found)
    report.mismatched.append(name)


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


def patch_tensor(
    where: str,
    name: str,
    w: torch.Tensor,
    parts: Sequence[tuple[Patch, float]],
    report: PatchReport,
    *,
    force: bool = False,
    clamp_var: bool = False,
    inverse: bool = False,
    fingerprint: Callable[[], str] | None = None,
) -> torch.Tensor:
    """The patched (or, with ``inverse``, un-patched) value of one tensor; ``w`` is not modified.

    ``fingerprint`` returns ``w``'s sha256 when the caller computes it concurrently (the file
    path hashes in a background thread while this computes).
    """
    check_target(where, name, parts, tuple(w.shape), w.dtype)
    d = total_delta(name, parts, w.dtype).to(w.device)
    out = sub_delta(w, d, inplace=True) if inverse else add_delta(w, d, inplace=True)
    if not all_finite(out):  # a NaN/Inf delta shows here too; look at the delta only to say which
        labels = ", ".join(p.label for p, _ in parts)
        if not all_finite(total_delta(name, parts, w.dtype)):
            raise NonFiniteError(name, f"the delta of {labels}")
        raise NonFiniteError(name, "the patched result")
    out = check_result(name, out, clamp_var)
    if inverse:
        check_restored(name, out, parts, report)
    else:
        found = fingerprint() if fingerprint else tensor_sha256(w)
        check_base(where, name, found, parts, report, force, target=w)
    report.touched += 1
    return out


def check_restored(
    name: str, out: torch.Tensor, parts: Sequence[tuple[Patch, float]], report: PatchReport
) -> None:
    """After a removal: does the tensor hash to the base fingerprint again?"""
    expected = {p.tensors[name].base_sha256 for p, _ in parts} - {None}
    if not expected:
        return
    report.checked += 1
    if tensor_sha256(out) in expected:
        report.exact += 1
    else:
        report.inexact.append(name)


Target = nn.Module | MutableMapping[str, torch.Tensor]


def _state(target: Target) -> tuple[MutableMapping[str, torch.Tensor], str]:
    """The tensors to patch and a label: a module's state dict (its tensors share the parameters'
    storage), taken out of ``torch.compile`` / ``DataParallel`` / DDP wrappers first."""
    if not isinstance(target, nn.Module):
        return target, f"<{type(target).__name__}>"
    model, unwrapped = unwrap_module(target)
    if unwrapped:
        logger.info("patching the wrapped model: took off %s", ", ".join(unwrapped))
    return model.state_dict(), f"<{type(model).__name__}>"


def _keys(
    state: Mapping[str, torch.Tensor], names: Iterable[str], where: str, *, strict: bool = True
) -> dict[str, str]:
    """Each patch tensor name → its key in ``state``: the name itself, else the name under the
    wrapper prefixes (``module.``, ``_orig_mod.``) that every key of ``state`` has.

    Raises:
        MissingTensorError: a name is in neither form (unless not ``strict``: then left out).
    """
    cut: str | None = None
    out = {}
    for name in names:
        if name not in state:
            if cut is None:
                cut = strip_prefixes(state)[0]
            if not (cut and cut + name in state):
                if strict:
                    raise MissingTensorError(name, where, "the patch was made for another model")
                continue
            out[name] = cut + name
        else:
            out[name] = name
    return out


def _assign(
    target: Target, state: MutableMapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]
) -> None:
    """Write values (by key) into a module's tensors (in place) or a dict's entries (replaced)."""
    with torch.no_grad():
        for key, value in values.items():
            if isinstance(target, nn.Module):
                state[key].copy_(value.to(state[key].device))
            else:
                state[key] = value


def _run(
    target: Target,
    patches: Sequence[PatchArg],
    scale: float,
    *,
    force: bool,
    clamp_var: bool,
    inverse: bool,
) -> PatchReport:
    state, where = _state(target)
    plan = group_by_tensor(as_items(patches), scale)
    keys = _keys(state, plan, where)
    new: dict[str, torch.Tensor] = {}
    report = PatchReport()
    for name, parts in plan.items():  # compute everything first: nothing changes on error
        w = state[keys[name]].detach()
        new[keys[name]] = patch_tensor(
            where, name, w, parts, report, force=force, clamp_var=clamp_var, inverse=inverse
        )
    _assign(target, state, new)
    for name in report.mismatched:
        msg = f"tensor {name!r} differs from the patch's base fingerprint"
        report.warnings.append(msg)
        logger.warning(msg)
    if report.recast:
        logger.info(
            "%s: %d tensor(s) in another dtype than the patch's base match its fingerprint cast "
            "back (%s)",
            where,
            len(report.recast),
            ", ".join(report.recast[:3]) + (", …" if len(report.recast) > 3 else ""),
        )
    return report


def apply(
    target: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float = 1.0,
    force: bool = False,
    clamp_var: bool = False,
) -> PatchReport:
    """Add patches to a module or state dict in place: ``w += scale·α·patch.scale·δ``.

    Each patch may be a ``Patch`` or ``(Patch, α)``. Everything is checked (names, shapes, base
    fingerprints, NaN/Inf) before any tensor changes. A ``torch.compile``d or ``DataParallel`` /
    DDP module is patched through the model it wraps.

    Raises:
        MissingTensorError, ShapeMismatchError, NonFiniteError, IntegrityError,
        BaseMismatchError (unless ``force``; BaseDtypeMismatchError when the target is in
        another dtype than the patch's base and holds other values).

    Example:
        >>> rws.apply(model, patch, scale=0.5)  # doctest: +SKIP
    """
    return _run(target, patches, scale, force=force, clamp_var=clamp_var, inverse=False)


def remove(
    target: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float = 1.0,
    force: bool = False,
) -> PatchReport:
    """Take patches off a module or state dict in place: ``w ← cast_w(w − scale·Σ α·δ)``.

    Plain subtraction: the inverse of :func:`apply` to within one rounding per element, bit for
    bit for most elements. The report counts the restored tensors that hash to the base
    fingerprints again, so "restored" is a checked fact. A running variance that would go ≤ 0 is
    clamped at 0.

    Raises:
        MissingTensorError, ShapeMismatchError, NonFiniteError, IntegrityError.
    """
    return _run(target, patches, scale, force=force, clamp_var=True, inverse=True)


@contextmanager
def patched(
    model: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float = 1.0,
    force: bool = False,
    clamp_var: bool = False,
) -> Iterator[PatchReport]:
    """Apply patches for the duration of a ``with`` block; the touched tensors are restored bit for
    bit on exit, even when the block raises.

    Example:
        >>> with rws.patched(model, patch, scale=0.8):  # doctest: +SKIP
        ...     acc = accuracy(model)
    """
    state, where = _state(model)
    names = {n for p, _ in as_items(patches) for n in p.tensors}
    keys = _keys(state, names, where, strict=False)  # apply raises for a missing one
    saved = {key: state[key].detach().clone() for key in keys.values()}
    report = apply(model, *patches, scale=scale, force=force, clamp_var=clamp_var)
    try:
        yield report
    finally:
        _assign(model, state, saved)
