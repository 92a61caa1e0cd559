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

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rws.errors import NotAppliedError, OutputPathError, UsageError
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


@dataclass
class FileResult:
    """The output written, what was checked, and the applied stack it now records."""

    output: str
    report: PatchReport
    stack: list[dict[str, Any]]


def _entry(p: Patch, scale: float, sha256: str | None = None) -> dict[str, Any]:
    return {"sha256": sha256 or p.fingerprint(), "name": p.label, "scale": scale}


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
) -> FileResult:
    """Write ``base`` with the patches added to ``output`` (safetensors), streamed.

    A checkpoint folder is written as a folder of the same layout unless ``output`` ends in
    ``.safetensors`` (one file); ``folder`` True or False decides instead.

    Raises:
        OutputPathError: ``output`` is one of the inputs, inside an input folder, a folder for a
            one-file input, or a folder that is not empty.
        MissingTensorError, ShapeMismatchError, BaseMismatchError (unless ``force``),
        NonFiniteError: nothing is written.
    """
    items = [(p, a * scale) for p, a in as_items(patches)]
    sources = [p.source for p, _ in items if p.source]
    base, mirror, out = _target(base, output, folder, sources)
    ck = open_checkpoint(base)
    prior = read_applied(ck.metadata, ck.path)

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
    )
    return FileResult(out, report, stack)


def remove_file(
    patched: Source,
    patches: Sequence[Patch | tuple[Patch, float | None]],
    output: str | os.PathLike,
    *,
    force: bool = False,
    folder: bool | None = None,
) -> FileResult:
    """Write ``patched`` with the patches taken off to ``output``, streamed.

    Each patch must be in the checkpoint's applied stack (newest match wins); with no α given, the
    recorded scale is used. The report counts the restored tensors that hash to the base
    fingerprints recorded in the patches again (bit-exact restoration as a checked fact). Folders
    and ``folder`` as for :func:`apply_file`.

    Raises:
        NotAppliedError: a patch is not in the stack (unless ``force``).
    """
    pairs = [(x, None) if isinstance(x, Patch) else (x[0], x[1]) for x in patches]
    sources = [p.source for p, _ in pairs if p.source]
    patched, mirror, out = _target(patched, output, folder, sources)
    ck = open_checkpoint(patched)
    stack = list(read_applied(ck.metadata, ck.path))
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
        items.append((p, eff / p.scale if p.scale else 0.0))
    report, stack = stream(
        ck, items, out, stack, force=force, clamp_var=True, inverse=True, folder=mirror
    )
    return FileResult(out, report, stack)
