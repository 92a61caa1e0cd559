"""Apply and remove patches on checkpoint files, streamed.

The input is read, patched and written tensor by tensor, in cache-sized runs where the codec
allows (the pipeline is :mod:`rws.patching._stream`): peak memory is a few runs plus a few
tensors, not the model, and the output is renamed into place only when everything succeeded. The
base fingerprints are checked on the very bytes read. The output's metadata keeps the input's and
records the stack of applied patches under ``rws.applied``, newest last, so that
:func:`remove_file` can verify what it takes off.

A checkpoint folder (Hugging Face layout: shards and ``model.safetensors.index.json``, or one
``model.safetensors``) is written as a folder of the same layout: the same shard files holding the
same tensors, the index with its ``weight_map`` unchanged, ``config.json`` and the other small
files copied; the whole folder is renamed into place at the end
(:class:`~rws.io.folder_write.FolderWriter`). An output path ending in ``.safetensors`` gets one
file instead.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rws.errors import (
    CheckpointError,
    MalformedInputError,
    NotAppliedError,
    OutputPathError,
    UndoMismatchError,
    UsageError,
)
from rws.io.atomic import is_folder_path
from rws.io.checkpoint import (
    SafetensorsCheckpoint,
    Source,
    check_output_path,
    open_checkpoint,
)
from rws.io.hub_fetch import resolve_path
from rws.patching._stream import stream
from rws.patching.format import read_applied
from rws.patching.ops import PatchReport
from rws.patching.patch import Patch, as_items
from rws.patching.undo import Undo, undo_entry, undo_path

logger = logging.getLogger(__name__)


@dataclass
class FileResult:
    """The output written, what was checked, and the applied stack it now records."""

    output: str
    report: PatchReport
    stack: list[dict[str, Any]]
    undo_path: str | None = None  # apply(undo=True): the correction written; remove: the one used


def _entry(p: Patch, scale: float, sha256: str | None = None) -> dict[str, Any]:
    return {"sha256": sha256 or p.fingerprint(), "name": p.label, "scale": scale}


def check_stack(stack: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The applied stack, each entry checked (a sha256 string, a name, a finite scale).

    Raises:
        CheckpointError: an entry lacks a field or has one of the wrong type (edited by hand).
    """
    for i, e in enumerate(stack):
        scale = e.get("scale")
        if not isinstance(e.get("sha256"), str):
            why = "no 'sha256' string"
        elif not isinstance(e.get("name"), str):
            why = "no 'name' string"
        elif isinstance(scale, bool) or not isinstance(scale, int | float):
            why = f"'scale' {scale!r} is not a number"
        elif not math.isfinite(scale):
            why = f"'scale' {scale!r} is not finite"
        else:
            continue
        raise CheckpointError(path, f"the 'rws.applied' metadata, entry {i + 1}: {why}")
    return stack


def _target(
    source: Source, output: str | os.PathLike, folder: bool | None, others: list[str]
) -> tuple[Source, str | None, str]:
    """The source (an ``hf://`` reference fetched), the folder the output mirrors (None: the
    output is one file) and the checked output path."""
    if isinstance(source, str | os.PathLike):
        source = resolve_path(source)
        path = os.fspath(source)
        mirror = path if os.path.isdir(path) else None
    elif isinstance(source, SafetensorsCheckpoint) and os.path.isdir(source.path):
        mirror = source.path
    else:
        mirror = None
    if mirror is None:
        if folder:
            raise UsageError("folder=True needs a checkpoint folder as the input")
        if is_folder_path(output):
            path = getattr(source, "path", "")
            one = isinstance(source, str | os.PathLike) or os.path.exists(path)
            what = "one file" if one else "in memory"
            raise OutputPathError(output, f"is a folder; the input is {what}: give a file path")
        folder = False
    elif folder is None:
        name = os.fspath(output)
        folder = is_folder_path(name) or not name.lower().endswith(".safetensors")
    out = check_output_path(output, [source, *others], folder=folder)
    return source, mirror if folder else None, out


def apply_file(
    base: Source,
    patches: Sequence[Patch | tuple[Patch, float]],
    output: str | os.PathLike,
    *,
    scale: float = 1.0,
    force: bool = False,
    clamp_var: bool = False,
    folder: bool | None = None,
    undo: bool = False,
) -> FileResult:
    """Write ``base`` with the patches added to ``output`` (safetensors), streamed.

    A checkpoint folder is written as a folder of the same layout unless ``output`` ends in
    ``.safetensors`` (one file); ``folder`` True or False decides instead. With ``undo``, the
    low bits rounding drops are written beside it (``OUT.undo.safetensors``,
    :mod:`rws.patching.undo`), so that :func:`remove_file` restores every bit.

    Raises:
        OutputPathError: ``output`` (or its undo file) is one of the inputs, inside an input
            folder, a folder for a one-file input, or a folder that is not empty.
        MissingTensorError, ShapeMismatchError, BaseMismatchError, NoBaseFingerprintError
        (unless ``force``), NonFiniteError, CheckpointError (a malformed applied stack),
        UsageError (a NaN or infinite α): nothing is written.
    """
    items = [(p, a * scale) for p, a in as_items(patches)]
    sources = [p.source for p, _ in items if p.source]
    base, mirror, out = _target(base, output, folder, sources)
    upath = check_output_path(undo_path(out), [base, *sources, out]) if undo else None
    ck = open_checkpoint(base)
    prior = check_stack(read_applied(ck.metadata, ck.path), ck.path)

    def final() -> list[dict[str, Any]]:
        return prior + [_entry(p, a * p.scale) for p, a in items]

    # the patch fingerprints (a pass over every patch byte) are hashed while the tensors stream,
    # behind a placeholder of the same length; a patch without a name or file is labelled by its
    # fingerprint, so that case hashes first
    late = all(p.name or p.source for p, _ in items)
    stack = prior + [_entry(p, a * p.scale, "0" * 64) for p, a in items] if late else final()
    report, stack = stream(
        ck,
        items,
        out,
        stack,
        force=force,
        clamp_var=clamp_var,
        inverse=False,
        final_stack=final if late else None,
        folder=mirror,
        undo=Undo([undo_entry(p, a * p.scale) for p, a in items]) if upath else None,
    )
    if upath and report.undo is not None:
        try:
            report.undo.save(upath)
        except BaseException:  # the output without its undo file is not what was asked for
            shutil.rmtree(out) if os.path.isdir(out) else os.unlink(out)
            raise
    return FileResult(out, report, stack, upath)


def remove_file(
    patched: Source,
    patches: Sequence[Patch | tuple[Patch, float | None]],
    output: str | os.PathLike,
    *,
    force: bool = False,
    folder: bool | None = None,
    undo: str | os.PathLike | bool | None = None,
    strict: bool = False,
) -> FileResult:
    """Write ``patched`` with the patches taken off to ``output``, streamed.

    Each patch must be in the checkpoint's applied stack (newest match wins); with no α given, the
    recorded scale is used. The report counts the restored tensors that hash to the base
    fingerprints recorded in the patches again (``exact``: bit-exact restoration as a checked
    fact); the rest are ``unverified``. Folders and ``folder`` as for :func:`apply_file`.

    ``undo``: the correction an ``apply_file(…, undo=True)`` wrote, which restores every bit
    (proven by the base fingerprints it recorded): a path; None uses ``PATCHED.undo.safetensors``
    when it exists and fits (else plain subtraction, with a warning); False never uses one.
    ``strict``: write nothing unless every restored tensor is verified.

    Raises:
        NotAppliedError: a patch is not in the stack (unless ``force``).
        UndoMismatchError: the given undo file records other patches or scales.
        UnverifiedError: ``strict`` and a tensor is not verified bit-exact.
    """
    pairs = [(x, None) if isinstance(x, Patch) else (x[0], x[1]) for x in patches]
    sources = [p.source for p, _ in pairs if p.source]
    if isinstance(undo, str | os.PathLike):  # an input too: never written over
        sources.append(os.fspath(undo))
    elif undo is None and isinstance(patched, str | os.PathLike):
        sources += [u for u in [undo_path(patched)] if os.path.isfile(u)]
    patched, mirror, out = _target(patched, output, folder, sources)
    ck = open_checkpoint(patched)
    stack = check_stack(list(read_applied(ck.metadata, ck.path)), ck.path)
    items: list[tuple[Patch, float]] = []
    for p, alpha in pairs:
        fp = p.fingerprint()
        want = None if alpha is None else alpha * p.scale
        hit = next(
            (
                i
                for i in range(len(stack) - 1, -1, -1)
                if stack[i].get("sha256") == fp
                and (
                    want is None or abs(float(stack[i].get("scale", 0)) - want) <= 1e-9 * abs(want)
                )
            ),
            None,
        )
        if hit is None:
            if not force:
                applied = [f"{e.get('name')}:{e.get('scale')}" for e in stack]
                label = p.label + ("" if alpha is None else f":{alpha}")
                raise NotAppliedError(ck.path, label, applied)
            eff = p.scale if want is None else want
        else:
            eff = float(stack.pop(hit)["scale"])
        items.append((p.replace(scale=1.0), eff))  # α·scale exactly as applied: the same delta
    items, fix, used, warning = _undo(undo, patched, ck.path, items)
    report, stack = stream(ck, items, out, stack, force=force, clamp_var=True, inverse=True,
                           folder=mirror, corrections=fix, strict=strict)  # fmt: skip
    if warning:
        report.warnings.append(warning)
        logger.warning(warning)
    return FileResult(out, report, stack, used)


def _undo(
    given: str | os.PathLike | bool | None, source: Any, where: str, items: list
) -> tuple[list, dict | None, str | None, str]:
    """The items in the undo file's order, its corrections, its path and a warning (an
    automatically found file that does not fit is not used)."""
    if given is False or (given is None and not isinstance(source, str | os.PathLike)):
        return items, None, None, ""
    path = undo_path(source) if given is None or given is True else os.fspath(given)
    if given is None and not os.path.isfile(path):
        return items, None, None, ""
    try:
        u = Undo.load(path)
        return u.order(path, items), u.tensors, path, ""
    except (UndoMismatchError, MalformedInputError) as err:
        if given is not None:
            raise
        return items, None, None, f"{where}: undo file not used: {err}"
