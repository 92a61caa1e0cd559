"""A pickle reader that builds nothing but plain containers, numbers, strings and numpy arrays.

The CIFAR "python version" batches are pickles. A pickle can call any importable function while it
loads (``__reduce__``), so this reader resolves only the globals that numpy arrays need, and refuses
every other one, before anything is called.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, BinaryIO

import numpy as np

from rws.data._files import open_input
from rws.errors import MalformedInputError, RwsError, UnsafeInputError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 pickles: str -> bytes, as written
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol <= 2
            return self._latin1_encode
        raise UnsafeInputError(
            self.path,
            f"the pickle refers to {module}.{name}; only containers, numbers, strings and numpy "
            "arrays are allowed, so it was not loaded (nothing in it was run)",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeInputError(self.path, "the pickle uses persistent ids; it was not loaded")

    def _latin1_encode(self, text: str, encoding: str = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafeInputError(
                self.path, f"the pickle calls _codecs.encode with {encoding!r}; it was not loaded"
            )
        return text.encode("latin1")


def load_restricted_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle whose content may only be containers, numbers, strings and numpy arrays.

    Args:
        path: the file.

    Returns:
        The unpickled object.

    Raises:
        InputFileError: the file cannot be opened.
        UnsafeInputError: the pickle refers to any other global (``os.system`` …); nothing
            is run.
        MalformedInputError: the bytes are not a complete, valid pickle.
    """
    path = os.fspath(path)
    with open_input(path) as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except RwsError:
            raise
        except Exception as exc:  # malformed pickles raise assorted types, EOFError without text
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise MalformedInputError(path, f"not a readable pickle ({detail})") from exc
