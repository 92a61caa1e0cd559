"""The CLI's argument syntax: ``PATCH:α``, ``key=value`` tags, comma lists of attacks and
corruptions (re-exported by :mod:`rws.cli.options`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rws.errors import UsageError
from rws.robustness.corruptions import CORRUPTIONS


def parse_patch_arg(spec: str) -> tuple[str, float | None]:
    """``"fog.safetensors:0.8"`` → ``("fog.safetensors", 0.8)``; no ``:α`` → ``(path, None)``.

    Example:
        >>> parse_patch_arg("hf://org/repo/fog.safetensors")
        ('hf://org/repo/fog.safetensors', None)
    """
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            alpha = float(tail)
        except ValueError:
            return spec, None
        if not math.isfinite(alpha):
            raise UsageError(f"{spec}: α {tail!r} is not a finite number")
        return path, alpha
    return spec, None


def parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    """``["corruption=fog"]`` → ``{"corruption": "fog"}``.

    Raises:
        UsageError: an item without ``=`` or without a key.
    """
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {item!r}: expected key=value")
        tags[key] = value
    return tags


def parse_attacks(text: str) -> tuple[str, ...]:
    """``"none"`` → ``()``; ``"pgd, apgd"`` → ``("pgd", "apgd")`` (names checked by the option).

    Example:
        >>> parse_attacks("pgd,autoattack-lite")
        ('pgd', 'autoattack-lite')
    """
    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    return () if names in ((), ("none",)) else names


def parse_corruptions(text: str, *, option: str = "--corruptions") -> tuple[str, ...]:
    """``"all"`` → the 15 benchmark corruptions; ``"none"`` → ``()``; ``"fog, snow"`` → both.

    Raises:
        UsageError: no name at all.
    """
    text = text.strip()
    if text == "none":
        return ()
    if text == "all":
        return CORRUPTIONS
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if not names:
        raise UsageError(f"{option} {text!r}: give corruption names, all or none")
    return names
