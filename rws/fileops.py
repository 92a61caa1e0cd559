"""Apply and remove patches on checkpoint files, streamed one tensor at a time.

The input is read with positioned reads (one tensor read ahead in a thread), the output is written
with :class:`~rws.safetensors_io.StreamWriter` (header first, then each tensor as it is computed,
from a writer thread, into a temp file renamed into place on success): peak memory is a few
tensors, not the model. The output's metadata keeps the input's and records the stack of applied
patches under ``rws.applied``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rws.checkpoint import Source, check_output_path, open_checkpoint, tensor_sha256
from rws.errors import MissingTensorError, NotAppliedError
from rws.format import applied_metadata, read_applied
from rws.ops import PatchReport, check_target, group_by_tensor, patch_tensor
from rws.patch import Patch, as_items
from rws.safetensors_io import StreamWriter

logger = logging.getLogger(__name__)


@dataclass
class FileResult:
    """The output written, what was checked, and the applied stack it now records."""

    output: str
    report: PatchReport
    stack: list[dict[str, Any]]


def _stream(
    source: Source,
    items: Sequence[tuple[Patch, float]],
    output: str,
    stack: list[dict[str, Any]],
    *,
    force: bool,
    clamp_var: bool,
    inverse: bool,
) -> PatchReport:
    ck = open_checkpoint(source)
    where = ck.path
    plan = group_by_tensor(items)
    for name, parts in plan.items():  # every cheap check before the first byte is written
        if name not in ck:
            raise MissingTensorError(name, where, "the patch was made for another model")
        check_target(where, name, parts, ck.shape(name), ck.dtype(name))
    spec = {n: (ck.dtype(n), ck.shape(n)) for n in ck}
    meta = applied_metadata({"format": "pt", **ck.metadata}, stack)
    report = PatchReport()
    # sha256 of each base tensor runs in a thread (hashlib releases the GIL) while torch computes
    # Pipelined: a reader thread fetches the next tensor and a hasher fingerprints the current
    # one while torch computes, and StreamWriter writes from its own thread. At most a few
    # tensors are in memory at once.
    names = list(ck)
    with ThreadPoolExecutor(max_workers=2) as pool, StreamWriter(output, spec, meta) as writer:
        ahead = pool.submit(ck.get, names[0]) if names else None
        for i, name in enumerate(names):
            assert ahead is not None
            t = ahead.result()
            ahead = pool.submit(ck.get, names[i + 1]) if i + 1 < len(names) else None
            if name in plan:
                sha = None if inverse else pool.submit(tensor_sha256, t)
                t = patch_tensor(
                    where,
                    name,
                    t,
                    plan[name],
                    report,
                    force=force,
                    clamp_var=clamp_var,
                    inverse=inverse,
                    fingerprint=sha.result if sha else None,
                )
            writer.write(name, t)
    ck.close()
    for name in report.mismatched:
        msg = f"{where}: tensor {name!r} differs from the patch's base fingerprint"
        report.warnings.append(msg)
        logger.warning(msg)
    return report


def _entry(p: Patch, scale: float) -> dict[str, Any]:
    return {"sha256": p.fingerprint(), "name": p.label, "scale": scale}


def apply_file(
    base: Source,
    patches: Sequence[Patch | tuple[Patch, float]],
    output: str | os.PathLike,
    *,
    scale: float = 1.0,
    force: bool = False,
    clamp_var: bool = False,
) -> FileResult:
    """Write ``base`` with the patches added to ``output`` (safetensors), streamed.

    Raises:
        OutputPathError: ``output`` is one of the inputs.
        MissingTensorError, ShapeMismatchError, BaseMismatchError (unless ``force``),
        NonFiniteError: nothing is written.
    """
    items = [(p, a * scale) for p, a in as_items(patches)]
    out = check_output_path(output, [base, *[p.source for p, _ in items if p.source]])
    ck = open_checkpoint(base)
    stack = read_applied(ck.metadata, ck.path)
    stack = stack + [_entry(p, a * p.scale) for p, a in items]
    report = _stream(ck, items, out, stack, force=force, clamp_var=clamp_var, inverse=False)
    return FileResult(out, report, stack)


def remove_file(
    patched: Source,
    patches: Sequence[Patch | tuple[Patch, float | None]],
    output: str | os.PathLike,
    *,
    force: bool = False,
) -> FileResult:
    """Write ``patched`` with the patches taken off to ``output``, streamed.

    Each patch must be in the checkpoint's applied stack (newest match wins); with no α given, the
    recorded scale is used. The report counts the restored tensors that hash to the base
    fingerprints recorded in the patches again (bit-exact restoration as a checked fact).

    Raises:
        NotAppliedError: a patch is not in the stack (unless ``force``).
    """
    pairs = [(x, None) if isinstance(x, Patch) else (x[0], x[1]) for x in patches]
    out = check_output_path(output, [patched, *[p.source for p, _ in pairs if p.source]])
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
    report = _stream(ck, items, out, stack, force=force, clamp_var=True, inverse=True)
    return FileResult(out, report, stack)
