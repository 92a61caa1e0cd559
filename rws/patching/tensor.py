"""``TensorDelta``: one patched tensor, and the weights of *fixed* tensors.

A tensor is **fixed** (manifest entry ``"fixed": true``) when its delta replaces the base tensor at
full weight whatever the patch's scale: ``--bn replace-all`` stores every BatchNorm tensor so, as
``R − Wc`` with ``R`` the robust models' average, and the reference replaces BN tensors whatever
α. Only the sign of the effective α counts (:func:`fixed_weights`): α > 0 replaces, α = 0 leaves
the tensor alone (so α = 0 is still "no change" for an operating-point search) and α < 0 takes the
replacement back off. Several patches fixing one tensor apply the **mean** of their replacements
(the reference's average over robust models), so composing one patch gives that patch again.

Base fingerprints: a patch made now records, per tensor, the first 64 bits of the base tensor's
sha256 (16 hex digits, :data:`FINGERPRINT_HEX`) and, for the whole base, the full sha256 of the
patched tensors' sha256s (:func:`base_digest`); files before format 3 hold full per-tensor
sha256s. :func:`fingerprint_matches` compares either with a tensor's sha256.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rws.errors import UsageError
from rws.patching import codecs
from rws.patching._readonly import thaw

FINGERPRINT_HEX = 16  # hex digits of a tensor's sha256 kept in a format-3 manifest (64 bits)
_HEX = re.compile(r"[0-9a-f]{16,64}")


def is_fingerprint(value: Any) -> bool:
    """A base fingerprint as a manifest holds it: 16 to 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def fingerprint_matches(expected: str, sha256: str) -> bool:
    """Whether a tensor's full ``sha256`` (hex) matches a recorded fingerprint: the full digest
    (format 1, 2) or its first 64 bits (format 3). Never true for an empty fingerprint.

    Example:
        >>> fingerprint_matches("ab" * 8, "ab" * 32), fingerprint_matches("", "ab" * 32)
        (True, False)
    """
    return len(expected) >= FINGERPRINT_HEX and sha256.startswith(expected)


def same_base(a: str, b: str) -> bool:
    """Whether two recorded fingerprints (full or 64-bit) may name the same base tensor."""
    n = min(len(a), len(b))
    return n >= FINGERPRINT_HEX and a[:n] == b[:n]


def base_digest(sha256s: Mapping[str, str]) -> str:
    """The whole base's fingerprint: sha256 of ``"name:sha256\n"`` lines of the patched tensors'
    full sha256s, in name order.

    Example:
        >>> len(base_digest({"w": "0" * 64}))
        64
    """
    lines = "".join(f"{n}:{sha256s[n]}\n" for n in sorted(sha256s))
    return hashlib.sha256(lines.encode()).hexdigest()


def compact(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (what a manifest stores of norms and errors).

    Example:
        >>> compact(2.5418641567230225)
        2.542
    """
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class TensorDelta:
    """One patched tensor: its encoded delta and the facts about the base it was taken against.

    Attributes:
        name: the tensor's name in the base state dict.
        shape: the base tensor's shape.
        dtype: the base tensor's dtype, e.g. ``"float32"``.
        encoded: the stored delta (:class:`~rws.patching.codecs.Encoded`).
        base_sha256: sha256 of the base tensor the delta was taken against, if known.
        delta_l2, base_l2: ‖δ‖ and ‖w‖.
        fixed: applied at full weight whatever the scale (see the module doc).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # the base tensor's dtype, e.g. "float32"
    encoded: codecs.Encoded
    base_sha256: str | None = None
    delta_l2: float = 0.0
    base_l2: float = 0.0
    fixed: bool = False

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def decode(self) -> torch.Tensor:
        """The float32 delta (unscaled)."""
        return codecs.decode(self.name, self.encoded, self.shape)

    def manifest(
        self, defaults: Mapping[str, Any] | None = None, *, shape_stored: bool = False
    ) -> dict[str, Any]:
        """This tensor's entry in a format-3 manifest (a fresh, mutable dict): only what differs
        from the patch-wide ``defaults`` (``dtype``, ``codec``, ``blocksize``) and what the file
        cannot tell (the shape, unless ``shape_stored``: its main stored tensor has it).

        Keys: ``s`` shape, ``t`` dtype, ``c`` codec, ``b`` block size, ``p`` other codec
        parameters (sparsity), ``e`` relative codec error, ``d`` ‖δ‖, ``w`` ‖w‖, ``f`` base
        fingerprint (64 bits), ``fixed``.
        """
        defaults = defaults or {}
        params = thaw(self.encoded.params)
        bs, err = params.pop("blocksize", None), params.pop("rel_error", 0.0)
        entry: dict[str, Any] = {} if shape_stored else {"s": list(self.shape)}
        if self.dtype != defaults.get("dtype"):
            entry["t"] = self.dtype
        if self.encoded.codec != defaults.get("codec"):
            entry["c"] = self.encoded.codec
        if bs is not None and bs != defaults.get("blocksize"):
            entry["b"] = bs
        if params:
            entry["p"] = params
        if err:
            entry["e"] = compact(err, 3)
        entry["d"], entry["w"] = compact(self.delta_l2), compact(self.base_l2)
        if self.base_sha256:
            entry["f"] = self.base_sha256[:FINGERPRINT_HEX]
        if self.fixed:
            entry["fixed"] = True
        return entry


def fixed_weights(alphas: Sequence[float]) -> list[float]:
    """The weights of one fixed tensor's parts, given their effective αs: ``sign(α)/n`` over the
    ``n`` parts with α ≠ 0 (the mean of their replacements), 0 for the others.

    Example:
        >>> fixed_weights([0.3, 2.0, 0.0])
        [0.5, 0.5, 0.0]
    """
    n = sum(1 for a in alphas if a != 0)
    return [((a > 0) - (a < 0)) / n if n else 0.0 for a in alphas]


def part_weights(name: str, fixed: Sequence[bool], alphas: Sequence[float]) -> list[float]:
    """The weights of the parts touching tensor ``name``: their αs, or :func:`fixed_weights`
    when the tensor is fixed.

    Raises:
        UsageError: the tensor is fixed in some parts and scaled in others.
    """
    if not any(fixed):
        return list(alphas)
    if not all(fixed):
        raise UsageError(
            f"tensor {name!r} is fixed (a replacement, e.g. --bn replace-all) in one patch and "
            "scaled in another; apply or compose them separately"
        )
    return fixed_weights(alphas)
