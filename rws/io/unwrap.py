"""Unwrapping: the weights inside training checkpoints (``{"state_dict": …}`` and friends), wrapper
prefixes (``module.``, ``_orig_mod.``) and live wrapper modules (``torch.compile``,
``DataParallel``, ``DistributedDataParallel``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rws.errors import CheckpointError

#: Keys of a training checkpoint that may hold the weights, in the order they are tried.
WRAPPER_KEYS = (
    "state_dict",
    "model",
    "model_state_dict",
    "module",
    "net",
    "state_dict_ema",
    "model_ema",
    "ema",
)
#: Name prefixes of wrapped models, stripped when every tensor name has one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_NESTING = 2  # {"model": {"state_dict": …}}


def find_state_dict(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights in a loaded checkpoint object, and what was unwrapped to reach them.

    A flat ``{name: tensor}`` mapping is the weights; otherwise the first of
    :data:`WRAPPER_KEYS` holding one (nested up to :data:`MAX_NESTING` times) is taken, and the
    others that hold one are named in the note. Wrapper prefixes are then stripped
    (:func:`strip_prefixes`).

    Raises:
        CheckpointError: no state dict is found.
    """
    tensors, unwrapped = _weights(obj, path, [])
    cut, prefixes = strip_prefixes(tensors)
    if cut:
        tensors = {k[len(cut) :]: v for k, v in tensors.items()}
    return tensors, unwrapped + prefixes


def _weights(obj: Any, path: str, trail: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    under = f" under {' → '.join(repr(k) for k in trail)}" if trail else ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds {_a(obj)}{under}, not a state dict")
    bad = next(
        (
            (k, v)
            for k, v in obj.items()
            if not (isinstance(k, str) and isinstance(v, torch.Tensor))
        ),
        None,
    )
    if bad is None:
        return dict(obj), []
    keys = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if keys and len(trail) < MAX_NESTING:
        found: list[tuple[str, dict[str, torch.Tensor], list[str]]] = []
        first_error: CheckpointError | None = None
        for key in keys:
            try:
                tensors, notes = _weights(obj[key], path, [*trail, key])
            except CheckpointError as err:
                first_error = first_error or err
                continue
            if tensors:
                found.append((key, tensors, notes))
        if found:
            key, tensors, notes = found[0]
            others = ", ".join(repr(k) for k, _, _ in found[1:])
            return tensors, [
                f"key {key!r}" + (f" (also found: {others})" if others else ""),
                *notes,
            ]
        if first_error is not None:
            raise first_error
    k, v = bad
    if not isinstance(k, str):
        raise CheckpointError(path, f"entry {k!r}{under} is named by {_a(k)}, not a string")
    hint = ""
    if isinstance(v, Mapping) and not trail:
        hint = f"; the weights are looked for under {', '.join(WRAPPER_KEYS[:5])}, …"
    raise CheckpointError(
        path,
        f"entry {k!r}{under} is {_a(v)}, not a tensor: not a flat state dict{hint}",
    )


def _a(obj: object) -> str:
    """``"a list"``, ``"an int"``: the type of ``obj`` with its article."""
    name = type(obj).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def strip_prefixes(names: Iterable[str]) -> tuple[str, list[str]]:
    """The wrapper prefixes (:data:`WRAPPER_PREFIXES`, in any combination) that every name has,
    joined (``"module._orig_mod."``), and a note for each (``"prefix 'module.'"``)."""
    rest = list(names)
    cut, notes = "", []
    while rest:
        prefix = next(
            (p for p in WRAPPER_PREFIXES if all(n.startswith(p) and len(n) > len(p) for n in rest)),
            None,
        )
        if prefix is None:
            break
        cut += prefix
        notes.append(f"prefix {prefix!r}")
        rest = [n[len(prefix) :] for n in rest]
    return cut, notes


def unwrap_module(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model inside ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``
    wrappers (in any combination), whose parameters the wrappers share, and a note for each
    wrapper taken off (``"wrapper OptimizedModule"``)."""
    notes = []
    while True:
        if type(module).__name__ == "OptimizedModule" and isinstance(
            getattr(module, "_orig_mod", None), nn.Module
        ):
            inner = module._orig_mod
        elif isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            inner = module.module
        else:
            return module, notes
        notes.append(f"wrapper {type(module).__name__}")
        module = inner  # type: ignore[assignment]
