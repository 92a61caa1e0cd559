"""Apply and remove patches on live modules and state dicts (files: :mod:`rws.patching.files`).

``w' = w + Σ αᵢ·scaleᵢ·decode(δᵢ)`` (a fixed tensor, :mod:`rws.patching.tensor`: the mean of
the replacements, whatever the scales), summed and added in float32 (float64 for a float64 base), cast
back to ``w``'s dtype (:func:`~rws.patching.arith.add_delta`). Removal is plain subtraction of the
same sum, ``cast_w(w' − D)`` (:func:`~rws.patching.arith.sub_delta`): it restores each element to
within one rounding, and bit for bit wherever adding ``D`` dropped no low bits of ``w`` (most
elements; :mod:`rws.patching.arith` says why no formula recovers the others). The base
fingerprints recorded in the patch then tell which restored tensors are exact; an apply with
``undo=True`` records the dropped bits so that removal restores every element
(:mod:`rws.patching.undo`). The checks and the report live in :mod:`rws.patching.checks`.

A module wrapped by ``torch.compile``, ``DataParallel`` or DDP is patched through the model inside
(:func:`~rws.io.checkpoint.unwrap_module`), in place in its parameters; a state dict whose keys
all carry ``module.`` / ``_orig_mod.`` prefixes is matched under them. A target in another dtype
than the patch's base passes the fingerprint check when it holds the base's values (cast back
losslessly); otherwise the error names both dtypes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from rws.errors import MissingTensorError, NonFiniteError, UsageError
from rws.io.hashing import tensor_sha256
from rws.io.unwrap import strip_prefixes, unwrap_module
from rws.patching.arith import add_delta, all_finite, compute_dtype, sub_delta
from rws.patching.checks import (
    PatchReport,
    check_base,
    check_restored,
    check_result,
    check_target,
    check_whole_base,
    require_fingerprints,
)
from rws.patching.patch import Patch, as_items
from rws.patching.tensor import part_weights
from rws.patching.undo import TensorUndo, Undo, lost, undo_entry

__all__ = [
    "PatchReport", "apply", "check_base", "check_restored", "check_result", "check_target",
    "check_whole_base",
    "group_by_tensor", "non_finite", "patch_tensor", "patched", "remove", "require_fingerprints",
    "total_delta",
]  # fmt: skip

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]


def group_by_tensor(
    items: Sequence[tuple[Patch, float]], scale: float = 1.0
) -> dict[str, list[tuple[Patch, float]]]:
    """Tensor name → the (patch, effective α) pairs touching it, in order of first appearance.

    For a fixed tensor the α is its weight in the mean of the replacements
    (:func:`rws.patching.tensor.fixed_weights`), whatever the scales.

    Raises:
        UsageError: a tensor fixed in one patch and scaled in another; a NaN or infinite α or scale.
    """
    out: dict[str, list[tuple[Patch, float]]] = {}
    for p, alpha in items:
        if not math.isfinite(alpha * p.scale * scale):
            raise UsageError(
                f"patch {p.label}: α {alpha:g} × scale {p.scale * scale:g} is not finite"
            )
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


def non_finite(name: str, parts: Sequence[tuple[Patch, float]], dtype: torch.dtype) -> None:
    """Raise the NonFiniteError :func:`patch_tensor` raises for a non-finite result."""
    labels = ", ".join(p.label for p, _ in parts)
    if not all_finite(total_delta(name, parts, dtype)):
        raise NonFiniteError(name, f"the delta of {labels}")
    raise NonFiniteError(name, "the patched result")


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
    undo: Undo | None = None,
    correction: TensorUndo | None = None,
) -> torch.Tensor:
    """The patched (or, with ``inverse``, un-patched) value of one tensor; ``w`` is not modified.

    ``fingerprint`` returns ``w``'s sha256 when the caller computes it concurrently (the file
    path hashes in a background thread while this computes). Applying, ``undo`` records the bits
    removal would not bring back; removing, ``correction`` writes them back.
    """
    check_target(where, name, parts, tuple(w.shape), w.dtype)
    d = total_delta(name, parts, w.dtype).to(w.device)
    keep = undo is not None and not inverse
    out = sub_delta(w, d, inplace=True) if inverse else add_delta(w, d, inplace=not keep)
    if not all_finite(out):  # a NaN/Inf delta shows here too; look at the delta only to say which
        non_finite(name, parts, w.dtype)
    out = check_result(name, out, clamp_var)
    if inverse:
        if correction is not None:
            out = correction.restore(name, out)
        check_restored(name, out, parts, report, correction)
    else:
        found = fingerprint() if fingerprint else tensor_sha256(w)
        check_base(where, name, found, parts, report, force, target=w)
        if undo is not None:  # what remove will compute, the same operations in the same order
            back = check_result(name, sub_delta(out, d, inplace=True), True)
            undo.add(name, [lost(w, back)], found, w.numel())
    report.touched += 1
    return out


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
    undo: bool = False,
    correction: Undo | None = None,
) -> PatchReport:
    state, where = _state(target)
    items = as_items(patches)
    if correction is not None:
        items = correction.order(where, items, scale)
        scale = 1.0
    plan = group_by_tensor(items, scale)
    keys = _keys(state, plan, where)
    if not inverse:
        require_fingerprints(where, plan, force)
    new: dict[str, torch.Tensor] = {}
    report = PatchReport()
    if undo:
        report.undo = Undo([undo_entry(p, a * p.scale * scale) for p, a in items])
    fixes = correction.tensors if correction is not None else {}
    for name, parts in plan.items():  # compute everything first: nothing changes on error
        w = state[keys[name]].detach()
        new[keys[name]] = patch_tensor(
            where, name, w, parts, report, force=force, clamp_var=clamp_var, inverse=inverse,
            undo=report.undo, correction=fixes.get(name),
        )  # fmt: skip
    if not inverse:
        check_whole_base(where, (p for p, _ in items), report, force)
    _assign(target, state, new)
    for name in report.mismatched:
        msg = f"tensor {name!r} differs from the patch's base fingerprint"
        report.warnings.append(msg)
        logger.warning(msg)
    if report.recast:
        shown = ", ".join(report.recast[:3]) + (", …" if len(report.recast) > 3 else "")
        logger.info("%s: %d tensor(s) in another dtype than the patch's base match its "
                    "fingerprint cast back (%s)", where, len(report.recast), shown)  # fmt: skip
    return report


def apply(
    target: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float = 1.0,
    force: bool = False,
    clamp_var: bool = False,
    undo: bool = False,
) -> PatchReport:
    """Add patches to a module or state dict in place: ``w += scale·α·patch.scale·δ``.

    Each patch may be a ``Patch`` or ``(Patch, α)``. Everything is checked (names, shapes, base
    fingerprints, NaN/Inf) before any tensor changes. A ``torch.compile``d or ``DataParallel`` /
    DDP module is patched through the model it wraps. With ``undo``, ``report.undo`` holds the
    low bits rounding dropped (:mod:`rws.patching.undo`): ``remove(…, undo=report.undo)`` then
    restores every element bit for bit.

    Raises:
        MissingTensorError, ShapeMismatchError, NonFiniteError, IntegrityError,
        BaseMismatchError (unless ``force``; BaseDtypeMismatchError when the target is in
        another dtype than the patch's base and holds other values), NoBaseFingerprintError
        (unless ``force``: a tensor no patch records a base fingerprint for), UsageError (a NaN or
        infinite α or scale).

    Example:
        >>> rws.apply(model, patch, scale=0.5)  # doctest: +SKIP
    """
    return _run(target, patches, scale, force=force, clamp_var=clamp_var, inverse=False, undo=undo)


def remove(
    target: nn.Module | MutableMapping[str, torch.Tensor],
    *patches: PatchArg,
    scale: float = 1.0,
    force: bool = False,
    undo: Undo | None = None,
) -> PatchReport:
    """Take patches off a module or state dict in place: ``w ← cast_w(w − scale·Σ α·δ)``.

    Plain subtraction: the inverse of :func:`apply` to within one rounding per element, bit for
    bit for most elements; with the ``undo`` an ``apply(…, undo=True)`` recorded (the same
    patches and scales), bit for bit everywhere. The report counts the restored tensors that
    hash to the base fingerprints again (``exact``), so "restored" is a checked fact; the others
    are ``unverified``. A running variance that would go ≤ 0 is clamped at 0.

    Raises:
        MissingTensorError, ShapeMismatchError, NonFiniteError, IntegrityError (also: ``undo``
        recorded other patches or scales).
    """
    return _run(target, patches, scale, force=force, clamp_var=True, inverse=True, correction=undo)


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
