"""``Patch``: named, encoded weight deltas with their metadata, arithmetic and save/load.

Patches are immutable in use: :class:`Patch` and :class:`TensorDelta` are frozen dataclasses,
and their mapping and list fields are deep read-only copies (:mod:`rws.patching._readonly`), so
a patch never shares mutable state with the dicts it was built from, nor with the patches derived
from it. A change is a new patch: ``patch.replace(scale=0.5, tags={**patch.tags, "k": "v"})``.
The stored tensors themselves are shared between a patch and those derived by scaling (no copy, no
re-read of a lazily loaded file); nothing in rws writes into them, and every decode returns a
fresh tensor that the caller owns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from rws._version import __version__
from rws.errors import (
    BaseMismatchError,
    NonFiniteError,
    PatchFormatError,
    UnknownNameError,
    UsageError,
)
from rws.io.hub_fetch import resolve_path
from rws.io.safetensors_layout import tensor_bytes
from rws.patching import codecs, format
from rws.patching._hub import HubMixin
from rws.patching._readonly import ReadOnlyDict, ReadOnlyList, thaw
from rws.patching.codec_map import CodecMapSpec, CodecPlan, encode_tensor
from rws.patching.encode import check_name, elect_signs, encode_deltas
from rws.patching.tensor import TensorDelta, compact, part_weights, same_base

__all__ = ["Patch", "as_items", "check_name", "compose", "encode_deltas", "load", "provenance"]


@dataclass(frozen=True)
class Patch(HubMixin):
    """A set of weight deltas: ``w' = w + scale·delta`` for each named tensor; immutable.

    Arithmetic: ``patch * 0.5``, ``patch / 2`` and ``-patch`` change only ``scale`` (exact, no
    re-encoding); ``p1 + p2`` and ``p1 - p2`` decode, sum in float32 and store the result with the
    fp32 codec (use :func:`rws.compose` to choose another codec). Every operator and
    :meth:`replace` returns a new patch and leaves its operands as they were.

    Attributes:
        tensors: tensor name → :class:`TensorDelta`, in depth order.
        kind: a registered kind (:func:`rws.patching.format.list_kinds`).
        scale: the default α applied with the patch.
        name, description, tags: labels.
        provenance: how the patch was made (tool, sources, method parameters …).
        skipped: tensors left out because their delta was exactly zero.
        base: facts about the whole base (``numel``, ``tensors``, ``dtypes``).
        extra: manifest keys this rws does not know, kept and written back.
        source: the file the patch was loaded from, if any.

    The mappings and lists are read-only ``dict``/``list`` copies (``TypeError`` on any change).

    Example:
        >>> half = patch * 0.5          # doctest: +SKIP
        >>> half.save("half.rws.safetensors")  # doctest: +SKIP
        >>> tagged = patch.replace(tags={**patch.tags, "corruption": "fog"})  # doctest: +SKIP
    """

    tensors: Mapping[str, TensorDelta]
    kind: str = "delta"
    scale: float = 1.0
    name: str = ""
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    skipped: Sequence[str] = ()
    base: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        format.PATCH_KINDS.entry(self.kind)  # UnknownNameError (a UsageError) listing the kinds
        for key in ("tensors", "tags", "provenance", "base", "extra"):
            value = getattr(self, key)
            if not isinstance(value, ReadOnlyDict):
                object.__setattr__(self, key, ReadOnlyDict(value))
        if not isinstance(self.skipped, ReadOnlyList):
            object.__setattr__(self, "skipped", ReadOnlyList(self.skipped))

    def replace(self, **changes: Any) -> Patch:
        """A new patch with ``changes`` to its fields; this one is unchanged.

        Example:
            >>> p2 = patch.replace(scale=0.8, provenance={**patch.provenance, "alpha": 0.8})  # doctest: +SKIP

        The whole base's sha256 (``base["sha256"]``) covers exactly the patch's tensors: a change
        of the tensor set drops it (the per-tensor fingerprints still check each tensor).
        """
        tensors = changes.get("tensors")
        if tensors is not None and set(tensors) != set(self.tensors) and "base" not in changes:
            changes["base"] = {k: v for k, v in self.base.items() if k != "sha256"}
        return dataclasses.replace(self, **changes)

    # --- contents -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Patched tensor names, in depth order."""
        return list(self.tensors)

    def delta(self, name: str, *, scaled: bool = True) -> torch.Tensor:
        """The float32 delta of one tensor, times ``scale`` (its sign for a fixed tensor) unless
        ``scaled=False``."""
        t = self.tensors[name]
        d = t.decode()
        w = part_weights(name, [t.fixed], [self.scale])[0] if scaled else 1.0
        return d * w if w != 1.0 else d

    def numel(self) -> int:
        """Elements touched by the patch."""
        return sum(t.numel for t in self.tensors.values())

    def nbytes(self) -> int:
        """Bytes of stored tensor data."""
        return sum(t.encoded.nbytes() for t in self.tensors.values())

    def fingerprint(self) -> str:
        """sha256 of the stored content (names, codecs, bytes); independent of scale and labels."""
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            params = {k: v for k, v in t.encoded.params.items() if k != "rel_error"}
            key = [name, t.shape, t.encoded.codec, params] + (["fixed"] if t.fixed else [])
            h.update(json.dumps(key).encode())
            for suffix in sorted(t.encoded.tensors):
                h.update(suffix.encode())
                h.update(tensor_bytes(t.encoded.tensors[suffix]))
        return h.hexdigest()

    @property
    def label(self) -> str:
        """A short human name: ``name``, else the file name, else the fingerprint prefix."""
        if self.name:
            return self.name
        if self.source:
            return os.path.basename(self.source)
        return self.fingerprint()[:12]

    # --- arithmetic -----------------------------------------------------------------------------

    def __mul__(self, alpha: float) -> Patch:
        if not isinstance(alpha, int | float) or isinstance(alpha, bool):
            return NotImplemented
        if not math.isfinite(alpha) or not math.isfinite(self.scale * float(alpha)):
            raise UsageError(f"patch {self.label}: scale factor {alpha!r} is not a finite number")
        return self.replace(scale=self.scale * float(alpha))

    __rmul__ = __mul__

    def __truediv__(self, alpha: float) -> Patch:
        return self * (1.0 / alpha)

    def __neg__(self) -> Patch:
        return self * -1.0

    def __add__(self, other: Patch) -> Patch:
        if not isinstance(other, Patch):
            return NotImplemented
        return compose([(self, 1.0), (other, 1.0)], codec="fp32")

    def __sub__(self, other: Patch) -> Patch:
        if not isinstance(other, Patch):
            return NotImplemented
        return compose([(self, 1.0), (other, -1.0)], codec="fp32")

    # --- persistence ----------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """The JSON manifest written into the file's metadata, format 3 (a fresh, mutable copy;
        empty labels left out, see :mod:`rws.patching.format`)."""
        labels = {"name": self.name, "description": self.description, "tags": dict(self.tags),
                  "skipped": list(self.skipped)}  # fmt: skip
        return {
            **thaw(self.extra),
            "kind": self.kind,
            "scale": self.scale,
            **{k: v for k, v in labels.items() if v},
            "provenance": thaw(self.provenance),
            "base": thaw(self.base),
            **format.tensor_table(self.tensors),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the patch atomically as a safetensors file (format 3).

        Raises:
            UsageError: a tensor name holds ``::``, the format's separator.
        """
        stored: dict[str, torch.Tensor] = {}
        for name, t in self.tensors.items():
            check_name(name)
            for suffix, part in t.encoded.tensors.items():
                stored[name + (format.SEP + suffix if suffix else "")] = part
        format.write_patch(path, stored, self.manifest())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        """Read a patch file (see :func:`rws.load`); ``hf://`` references are fetched first."""
        p = os.fspath(resolve_path(path))
        manifest, parts = format.read_patch(p)
        tensors: dict[str, TensorDelta] = {}
        for name, info in manifest["tensors"].items():
            codec = info["codec"]
            try:
                codecs.get_codec(codec)
            except UnknownNameError as err:  # malformed input (3), not a usage error
                raise PatchFormatError(p, f"tensor {name!r}: {err}") from None
            enc = codecs.Encoded(codec, parts[name], dict(info.get("params") or {}))
            tensors[name] = TensorDelta(
                name=name,
                shape=tuple(info["shape"]),
                dtype=str(info["dtype"]),
                encoded=enc,
                base_sha256=info.get("base_sha256"),
                delta_l2=float(info.get("delta_l2", 0.0)),
                base_l2=float(info.get("base_l2", 0.0)),
                fixed=info.get("fixed") is True,
            )
        known = {"format", "kind", "scale", "name", "description", "tags", "provenance"}
        known |= {"skipped", "base", "tensors"}
        if not math.isfinite(manifest.get("scale", 1.0)):
            raise PatchFormatError(p, f"'scale' {manifest['scale']!r} is not finite")
        return cls(
            tensors=tensors,
            kind=manifest["kind"],
            scale=float(manifest.get("scale", 1.0)),
            name=str(manifest.get("name") or ""),
            description=str(manifest.get("description") or ""),
            tags=dict(manifest.get("tags") or {}),
            provenance=dict(manifest.get("provenance") or {}),
            skipped=list(manifest.get("skipped") or []),
            base=dict(manifest.get("base") or {}),
            extra={k: v for k, v in manifest.items() if k not in known},
            source=p,
        )


def load(path: str | os.PathLike) -> Patch:
    """Load a patch file.

    Raises:
        InputFileError, PatchFormatError, FormatVersionError: see :func:`rws.patching.format.read_patch`.
    """
    return Patch.load(path)


def provenance(**fields: Any) -> dict[str, Any]:
    """Standard provenance fields plus the given ones (``None`` values dropped)."""

    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    base = {"tool": f"rws {__version__}", "created_at": now}
    base.update({k: v for k, v in fields.items() if v is not None})
    return base


def compose(
    patches: Iterable[Patch | tuple[Patch, float]],
    *,
    codec: str = "fp32",
    blocksize: int = codecs.DEFAULT_BLOCKSIZE,
    force: bool = False,
    name: str = "",
    ties: bool = False,
    codec_map: CodecMapSpec = None,
    sparsify: str | None = None,
    density: float = 1.0,
    seed: int = 0,
) -> Patch:
    """Weighted sum ``Σ αᵢ·scaleᵢ·δᵢ`` of patches, re-encoded with ``codec`` (result scale 1;
    small tensors in high precision, ``codec_map``, ``sparsify`` as in :func:`encode_deltas`).

    A fixed tensor (:mod:`rws.patching.tensor`) stays fixed: its delta is the mean of the
    replacements of the patches whose ``αᵢ·scaleᵢ`` is not 0 (signed), so ``compose([p])`` is
    ``p`` and the result applies as the patches applied together at scale 1 do.

    ``ties=True``: TIES-style sign election instead of the sum, element by element: the sign of
    ``Σ αᵢ·scaleᵢ·δᵢ`` is elected and the terms of that sign are averaged (the disjoint mean);
    terms of the other sign and zeros are left out. Patches extracted with ``sparsify="topk"``
    are TIES's trimmed task vectors.

    Raises:
        BaseMismatchError: two patches touch one tensor but were taken against different bases
            (``force=True`` to sum anyway).
        UsageError: a tensor fixed in one patch and scaled in another.
    """
    items = as_items(patches)
    if not items:
        raise UsageError("compose needs at least one patch")
    parts: dict[str, list[tuple[TensorDelta, float]]] = {}
    for p, alpha in items:
        for n, t in p.tensors.items():
            got = parts.setdefault(n, [])
            b0 = got[0][0].base_sha256 if got else None
            if not force and b0 and t.base_sha256 and not same_base(t.base_sha256, b0):
                raise BaseMismatchError(p.label, n, b0, t.base_sha256)
            got.append((t, alpha * p.scale))
    tensors: dict[str, TensorDelta] = {}
    skipped: list[str] = []
    plan = CodecPlan.of(codec, codec_map)
    for n, got in parts.items():
        weights = part_weights(n, [t.fixed for t, _ in got], [a for _, a in got])
        if ties and not got[0][0].fixed:
            d = elect_signs([t.decode() * w for (t, _), w in zip(got, weights, strict=True)])
        else:
            d = torch.zeros(got[0][0].shape)
            for (t, _), w in zip(got, weights, strict=True):
                d += t.decode() * w
        if not torch.isfinite(d).all():
            raise NonFiniteError(n, "the composed delta")
        if not d.any():
            skipped.append(n)
            continue
        enc = encode_tensor(n, d, None, plan, blocksize=blocksize, sparsify=sparsify,
                            density=density, seed=seed)  # fmt: skip
        norm = compact(float(d.double().norm()))
        tensors[n] = dataclasses.replace(got[0][0], encoded=enc, delta_l2=norm)
    plan.check(list(parts), {n: tuple(got[0][0].shape) for n, got in parts.items()})
    sources = [
        {"name": p.label, "sha256": p.fingerprint(), "alpha": a, "scale": p.scale} for p, a in items
    ]
    first_patch = items[0][0]
    return Patch(
        tensors=tensors,
        kind="composed",
        name=name,
        provenance=provenance(method="compose", sources=sources, ties=ties or None),
        skipped=skipped,
        base={k: v for k, v in first_patch.base.items() if k != "sha256"},  # other tensors
    )


def _with_alpha(p: Patch | tuple[Patch, float]) -> tuple[Patch, float]:
    if isinstance(p, Patch):
        return p, 1.0
    if (
        isinstance(p, tuple)
        and len(p) == 2
        and isinstance(p[0], Patch)
        and isinstance(p[1], int | float)
    ):
        return p[0], float(p[1])
    raise UsageError(f"expected a Patch or (Patch, alpha), got {type(p).__name__}")


def as_items(patches: Iterable[Patch | tuple[Patch, float]]) -> list[tuple[Patch, float]]:
    """Normalise ``Patch`` / ``(Patch, α)`` arguments to ``(Patch, α)`` pairs."""
    return [_with_alpha(p) for p in patches]
