"""Loading ``torch.save`` files safely: ``torch.load(weights_only=True)`` only, TorchScript
archives and pickles that import code refused in one line (naming the imports), and torch's advice
to load ``weights_only=False`` never shown."""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from typing import Any

import torch

from rws.errors import CheckpointError, UnsafeInputError

SAFE_TORCH = (2, 10)


def load_pickle(p: str) -> Any:
    """The object a ``torch.save`` file holds, loaded with ``weights_only=True`` on the CPU.

    Raises:
        UnsafeInputError: torch older than 2.10, or a pickle that imports code (listed).
        CheckpointError: a TorchScript archive or an unreadable file.
    """
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < SAFE_TORCH:
        raise UnsafeInputError(
            p, f"torch {torch.__version__} cannot load pickles safely; use torch >= 2.10"
        )
    if _is_torchscript(p):
        raise CheckpointError(
            p,
            "this is a TorchScript archive, not a state dict; save the weights where it was "
            'made, e.g. torch.save(model.state_dict(), "weights.pt"), or as safetensors',
        )
    try:
        with warnings.catch_warnings():  # torch's protocol warnings would precede the one line
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = unsafe_globals(p, err)
        if unsafe:  # the pickle imports code: refused, and never unpickled more loosely
            raise UnsafeInputError(p, _refusal(unsafe)) from None
        raise CheckpointError(
            p, f"not a readable torch checkpoint ({_unpickling_detail(err)})"
        ) from None
    except (RuntimeError, EOFError, IndexError, ValueError, struct.error, OSError) as err:
        unsafe = unsafe_globals(p, err)
        if unsafe:
            raise UnsafeInputError(p, _refusal(unsafe)) from None
        raise CheckpointError(p, f"not a readable torch checkpoint ({_oneline(err)})") from None
    return obj


def _is_torchscript(path: str) -> bool:
    """A ``torch.jit.save`` archive (a zip with ``constants.pkl``), which ``torch.load`` would
    hand to ``torch.jit.load``."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def unsafe_globals(path: str, err: BaseException) -> list[str]:
    """The imports (``module.name``) that made ``weights_only`` loading refuse a pickle: read
    statically from a zip checkpoint (nothing is unpickled), else from torch's error."""
    found: set[str] = set()
    with contextlib.suppress(Exception):  # legacy or broken files: read the opcodes instead
        found.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    if not found:
        found.update(pickle_globals(path))
    if not found:
        found.update(re.findall(r"GLOBAL ([\w.]+)", str(err)))
    return sorted(found)


def pickle_globals(path: str, limit: int = 64 << 20) -> set[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the pickles a plain (legacy
    ``torch.save`` or ``pickle``) file holds one after another, read from the opcodes with
    :mod:`pickletools` (nothing is unpickled), except those ``weights_only`` allows; empty for
    a file that is no pickle."""
    allowed: set[str] = set()
    with contextlib.suppress(Exception):  # a private torch helper: best effort
        allowed.update(torch._weights_only_unpickler._get_allowed_globals())
    found: set[str] = set()
    with contextlib.suppress(Exception), open(path, "rb") as fh:
        data = io.BytesIO(fh.read(limit))
        while data.tell() < len(data.getbuffer()):
            found.update(_globals(data))
    return found - allowed - {k.split(".", 1)[-1] for k in allowed}


def _globals(stream: io.BytesIO) -> set[str]:
    """The globals one pickle in ``stream`` imports (the stream is left after its STOP)."""
    out: set[str] = set()
    strings: list[str] = []  # the last string pushes, for STACK_GLOBAL
    memo: dict[int, str] = {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            out.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            out.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
            strings.append(memo[arg])
    return out


def _refusal(unsafe: list[str]) -> str:
    shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
    return (
        f"refused: the pickle needs more than plain tensors (it imports {shown}), and rws never "
        "unpickles code; save the weights alone where the file was made, e.g. "
        'torch.save(ckpt["state_dict"], "weights.pt"), or as safetensors'
    )


def _unpickling_detail(err: BaseException) -> str:
    """The informative line of torch's multi-paragraph ``weights_only`` error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    main = [ln for ln in lines if ln.startswith("WeightsUnpickler error:")]
    boiler = ("Please file an issue", "Check the documentation", "Weights only load failed", "(")
    detail = main or [ln for ln in lines if not ln.startswith(boiler)] or lines
    text = detail[0].removeprefix("WeightsUnpickler error:").strip() if detail else ""
    return _oneline(text) if text else type(err).__name__


def _oneline(err: BaseException | str) -> str:
    """One line of at most 200 characters, without torch's advice to load ``weights_only=False``."""
    sentences = re.split(r"(?<=\.) ", " ".join(str(err).split()))
    text = " ".join(s for s in sentences if "weights_only" not in s)
    return text[:200] or (type(err).__name__ if isinstance(err, BaseException) else "no detail")
