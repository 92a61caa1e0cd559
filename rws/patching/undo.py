"""Exact undo: the low bits an apply drops, kept as a sparse correction.

``add(w, d) = cast_w(w + d)`` loses low bits of ``w`` where the sum lands in a coarser binade
(:mod:`rws.patching.arith`), so plain subtraction restores most elements bit for bit and the rest
to within one rounding. An apply with ``undo=True`` computes, for every patched tensor, what
removal will compute (``cast_w(w' − d)``, the same operations in the same order) and keeps the
elements where that differs from ``w``: their flat indices and original values. Removal
subtracts, then writes those values back: every element comes back bit for bit, which the base
fingerprint taken at apply then proves.

On disk (``OUT.undo.safetensors`` beside the output, :func:`undo_path`) the correction is a plain
safetensors file: ``t<i>.index`` (int32, or int64 past 2³¹ elements) and ``t<i>.value`` (the
tensor's dtype) per tensor, and a JSON manifest under ``__metadata__["rws.undo"]``: the patches in
apply order (``sha256``, ``name``, ``scale``: the applied stack's entries) and per tensor its key
number, base sha256, dtype and element count.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rws.errors import CheckpointError, InputFileError, MalformedInputError, UndoMismatchError
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.patching.patch import Patch

UNDO_KEY = "rws.undo"
UNDO_SUFFIX = ".undo.safetensors"
UNDO_FORMAT = 1
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def undo_path(output: str | os.PathLike) -> str:
    """``OUT.undo.safetensors`` beside ``output`` (``x.safetensors`` → ``x.undo.safetensors``;
    a folder ``out/`` → ``out.undo.safetensors``)."""
    p = os.fspath(output).rstrip("/" + os.sep) or os.fspath(output)
    if p.lower().endswith(".safetensors"):
        p = p[: -len(".safetensors")]
    return p + UNDO_SUFFIX


def undo_entry(p: Patch, scale: float) -> dict[str, Any]:
    """One patch as an undo file (and the applied stack) records it, at its effective scale."""
    return {"sha256": p.fingerprint(), "name": p.label, "scale": scale}


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s elements as integers of the same width (bit-for-bit comparison; NaN and ±0 too)."""
    return t.reshape(-1).view(_BITS[t.element_size()])


def lost(
    w: torch.Tensor, restored: torch.Tensor, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat indices (offset by ``start``) where ``restored`` differs from ``w`` bit for bit,
    and ``w``'s values there."""
    idx = torch.nonzero(bits(w) != bits(restored)).reshape(-1)
    return idx + start, w.reshape(-1)[idx].clone()


@dataclass
class TensorUndo:
    """One tensor's correction: flat indices, original values, and the base fingerprint."""

    index: torch.Tensor
    value: torch.Tensor
    base_sha256: str
    numel: int

    def restore(self, name: str, restored: torch.Tensor) -> torch.Tensor:
        """Write the original values back into ``restored`` (a fresh tensor; returned).

        Raises:
            MalformedInputError: the correction does not fit the tensor (dtype, size, indices).
        """
        if restored.numel() != self.numel or restored.dtype != self.value.dtype:
            raise MalformedInputError(
                name,
                f"the undo correction is for {self.numel} {self.value.dtype} elements, the tensor "
                f"has {restored.numel()} {restored.dtype}",
            )
        if self.index.numel():
            flat = restored.view(-1) if restored.is_contiguous() else restored.reshape(-1)
            flat[self.index.to(torch.int64)] = self.value.to(restored.device)
            if not restored.is_contiguous():
                restored = flat.view(restored.shape)
        return restored


@dataclass
class Undo:
    """The corrections of one apply: the patches it added (apply order) and each tensor's."""

    patches: list[dict[str, Any]]
    tensors: dict[str, TensorUndo] = field(default_factory=dict)

    def add(
        self, name: str, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], sha: str, numel: int
    ) -> None:
        """Record one tensor's correction from ``(indices, values)`` pieces."""
        index = torch.cat([i for i, _ in parts]) if parts else torch.empty(0, dtype=torch.int64)
        value = torch.cat([v for _, v in parts]) if parts else torch.empty(0)
        small = torch.int32 if numel < 2**31 else torch.int64
        self.tensors[name] = TensorUndo(index.to(small), value, sha, numel)

    def order(
        self, where: str, items: Sequence[tuple[Patch, float]], scale: float = 1.0
    ) -> list[tuple[Patch, float]]:
        """The patches to remove, in the order and at the exact scales this undo recorded (so
        that removal sums the very delta the apply added), each as ``(patch at scale 1, α)``.

        Raises:
            UndoMismatchError: the patches or scales differ from those recorded.
        """
        left = [(p, a * p.scale * scale) for p, a in items]
        out = []
        for e in self.patches:
            hit = next((i for i, (p, eff) in enumerate(left) if p.fingerprint() == e["sha256"]
                        and abs(eff - e["scale"]) <= 1e-9 * abs(e["scale"])), None)  # fmt: skip
            if hit is None:
                break
            out.append((left.pop(hit)[0].replace(scale=1.0), float(e["scale"])))
        if left or len(out) != len(self.patches):
            rec = ", ".join(f"{e.get('name')}:{e['scale']:g}" for e in self.patches)
            got = ", ".join(f"{p.label}:{a * p.scale * scale:g}" for p, a in items)
            raise UndoMismatchError(where, rec, got)
        return out

    def elements(self) -> int:
        """Corrected elements in all."""
        return sum(t.index.numel() for t in self.tensors.values())

    def nbytes(self) -> int:
        """Bytes of the stored indices and values (the file adds a small header)."""
        return sum(
            t.index.numel() * t.index.element_size() + t.value.numel() * t.value.element_size()
            for t in self.tensors.values()
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the correction atomically (plain safetensors)."""
        stored: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {}
        for i, (name, t) in enumerate(self.tensors.items()):
            stored[f"t{i}.index"], stored[f"t{i}.value"] = t.index, t.value
            info[name] = {"key": i, "base_sha256": t.base_sha256, "numel": t.numel,
                          "dtype": str(t.value.dtype).removeprefix("torch.")}  # fmt: skip
        manifest = {"format": UNDO_FORMAT, "patches": self.patches, "tensors": info}
        save_tensors(path, stored, {"format": "pt", UNDO_KEY: json.dumps(manifest)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Undo:
        """Read an undo file.

        Raises:
            InputFileError: missing. MalformedInputError: not an rws undo file, or inconsistent.
        """
        p = os.fspath(path)
        if not os.path.isfile(p):
            raise InputFileError(p, "no such undo file" if not os.path.exists(p) else "not a file")
        try:
            tf = TensorFile(p)
        except CheckpointError as err:
            raise MalformedInputError(p, err.reason) from None
        try:
            manifest = _manifest(p, tf.metadata.get(UNDO_KEY))
            tensors = {n: _tensor(p, tf, n, i) for n, i in manifest["tensors"].items()}
        finally:
            tf.close()
        return cls(manifest["patches"], tensors)


def _manifest(path: str, raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise MalformedInputError(path, f"not an rws undo file (no {UNDO_KEY!r} metadata)")
    try:
        m = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise MalformedInputError(path, f"the {UNDO_KEY!r} metadata is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != UNDO_FORMAT:
        raise MalformedInputError(
            path, f"unknown undo format {m.get('format') if isinstance(m, dict) else m!r}"
        )
    pats, tens = m.get("patches"), m.get("tensors")
    if not isinstance(pats, list) or not isinstance(tens, dict):
        raise MalformedInputError(path, "the undo manifest lacks 'patches' or 'tensors'")
    for e in pats:
        scale = e.get("scale") if isinstance(e, dict) else None
        if not (isinstance(e, dict) and isinstance(e.get("sha256"), str) and _finite(scale)):
            raise MalformedInputError(path, f"malformed patch entry {e!r} in the undo manifest")
    return m


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _tensor(path: str, tf: TensorFile, name: str, info: Any) -> TensorUndo:
    ok = isinstance(info, dict) and isinstance(info.get("key"), int)
    ok = ok and isinstance(info.get("base_sha256"), str) and isinstance(info.get("numel"), int)
    keys = (f"t{info['key']}.index", f"t{info['key']}.value") if ok else ("", "")
    if not ok or any(k not in tf for k in keys):
        raise MalformedInputError(path, f"tensor {name!r}: malformed undo entry")
    index, value = tf.get(keys[0]), tf.get(keys[1])
    numel = info["numel"]
    bad = index.dim() != 1 or index.dtype not in (torch.int32, torch.int64)
    bad = bad or value.shape != index.shape
    bad = bad or (index.numel() > 0 and (int(index.min()) < 0 or int(index.max()) >= numel))
    if bad:
        raise MalformedInputError(path, f"tensor {name!r}: undo indices out of range or malformed")
    return TensorUndo(index, value, info["base_sha256"], numel)
