"""Writing a checkpoint folder (Hugging Face layout) as a stream, atomically.

:class:`FolderWriter` stands in for :class:`~rws.io.safetensors_write.StreamWriter` when the input
is a folder: each tensor goes to the shard of the same name as in the input, through one
``StreamWriter`` per shard, opened when its first tensor comes. On a clean exit the index is
rewritten (its ``weight_map`` unchanged, ``metadata.total_size`` recomputed) and the input's other
top-level files (``config.json``, tokenizer files …) are copied, all into a temp folder beside the
output renamed into place at the end (:func:`~rws.io.atomic.atomic_folder`). Weights in other
formats (``*.bin``, ``*.pt`` …, which would stay unpatched), sub-folders and hidden files are not
copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from rws.errors import CheckpointError
from rws.io.atomic import atomic_folder, write_atomic
from rws.io.json_read import loads_strict
from rws.io.safetensors_layout import nbytes
from rws.io.safetensors_write import StreamWriter

logger = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
#: Files holding weights (in any format) or their indexes: never copied from the input folder.
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
    ".pkl", ".pickle", ".npz", ".tflite", ".ot", ".index.json",
)  # fmt: skip

Spec = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]


class FolderWriter:
    """Write a checkpoint folder shard by shard, atomically.

    ``layout`` gives each tensor (by the name it is written under, in the order it comes) its
    shard file, relative to the folder, and the name it has there; ``metadata`` each shard's
    header metadata. With ``final=False`` the metadata is replaced later (:meth:`set_metadata`,
    same rules as ``StreamWriter``'s), and finished shards stay open until then.

    Example:
        >>> layout = {"w": ("model-00001-of-00001.safetensors", "w")}
        >>> spec = {"w": (torch.float32, (2,))}
        >>> with FolderWriter("out", "in", layout, spec, {}) as w:  # doctest: +SKIP
        ...     w.write("w", torch.zeros(2))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source: str | os.PathLike,
        layout: Mapping[str, tuple[str, str]],
        spec: Spec,
        metadata: Mapping[str, Mapping[str, str]],
        *,
        final: bool = True,
    ) -> None:
        self.path, self._source = os.fspath(path), os.fspath(source)
        self._layout = dict(layout)
        self._shards: dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}
        for name, (shard, stored) in self._layout.items():
            if os.path.isabs(shard) or os.path.normpath(shard).startswith(os.pardir):
                raise CheckpointError(self._source, f"shard {shard!r} lies outside the folder")
            self._shards.setdefault(shard, {})[stored] = spec[name]
        self._total = sum(nbytes(dt, shape) for dt, shape in spec.values())
        self._meta = {s: dict(metadata.get(s, {})) for s in self._shards}
        self._final = final
        self._lock = threading.Lock()  # set_metadata comes from another thread
        self._open: dict[str, StreamWriter] = {}
        self._seen: list[str] = []
        self._closed = False

    def __enter__(self) -> FolderWriter:
        self._ctx = atomic_folder(self.path)
        self._tmp = self._ctx.__enter__()
        return self

    def _writer(self, name: str) -> tuple[StreamWriter, str]:
        shard, stored = self._layout[name]
        if self._seen and self._seen[-1] == shard:
            return self._open[shard], stored
        if shard in self._seen:
            raise RuntimeError(f"FolderWriter: {name!r} goes to shard {shard!r}, already written")
        with self._lock:
            done = {} if not self._final else self._open
            self._open = {k: w for k, w in self._open.items() if k not in done}
            self._closed = self._closed or bool(done)
            target = os.path.join(self._tmp, shard)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            writer = StreamWriter(target, self._shards[shard], self._meta[shard])
            self._open[shard] = writer.__enter__()
            self._seen.append(shard)
        _close(list(done.values()), None)  # finished shards are renamed into the temp folder
        return writer, stored

    def begin(self, name: str) -> None:
        """Start the next tensor, whose bytes then come through :meth:`put`/:meth:`copy_from`."""
        writer, stored = self._writer(name)
        writer.begin(stored)

    def put(self, data: memoryview, done: Callable[[], None] | None = None) -> None:
        """Queue the next bytes of the current tensor (see ``StreamWriter.put``)."""
        self._open[self._seen[-1]].put(data, done)

    def copy_from(self, fd: int, offset: int, count: int, path: str = "") -> None:
        """Queue bytes of the current tensor copied from a file (see ``StreamWriter.copy_from``)."""
        self._open[self._seen[-1]].copy_from(fd, offset, count, path)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor whole."""
        writer, stored = self._writer(name)
        writer.write(stored, tensor)

    def set_metadata(self, metadata: Mapping[str, Mapping[str, str]]) -> None:
        """Replace every shard's metadata (``final=False`` only)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("FolderWriter: shards were closed before set_metadata")
            self._meta = {s: dict(metadata.get(s, {})) for s in self._shards}
            for shard, writer in self._open.items():
                writer.set_metadata(self._meta[shard])
            self._final = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            writers, self._open = list(self._open.values()), {}
        try:
            _close(writers, exc)
            err = exc
        except BaseException as e:
            err = e
        if err is None:
            try:
                missing = [s for s in self._shards if s not in self._seen]
                if missing:
                    raise RuntimeError(f"FolderWriter: closed before shard {missing[0]!r}")
                self._finish()
            except BaseException as e:
                err = e
        if err is None:
            self._ctx.__exit__(None, None, None)  # renames the folder into place
            return
        self._ctx.__exit__(type(err), err, err.__traceback__)  # deletes the temp folder
        if exc is None:
            raise err

    def _finish(self) -> None:
        index = os.path.join(self._source, INDEX)
        if os.path.isfile(index):
            write_atomic(os.path.join(self._tmp, INDEX), rewrite_index(index, self._total))
        for name in side_files(self._source, self._shards):
            copy_synced(os.path.join(self._source, name), os.path.join(self._tmp, name))


def _close(writers: list[StreamWriter], exc: BaseException | None) -> None:
    """Close every writer (each renames its file, or deletes it after ``exc`` or an earlier
    failure); the first failure is raised at the end."""
    err = exc
    for w in writers:
        try:
            w.__exit__(type(err) if err else None, err, None)
        except BaseException as e:
            err = err or e
    if err is not None and err is not exc:
        raise err


def rewrite_index(index: str | os.PathLike, total_size: int) -> str:
    """A safetensors index's JSON with ``metadata.total_size`` set (everything else kept).

    Raises:
        CheckpointError: not a JSON object with a ``weight_map``.
    """
    try:
        data = loads_strict(Path(index).read_bytes(), index, "the safetensors index")
    except OSError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(index, "not a valid safetensors index (no weight_map)")
    meta = data.get("metadata")
    data["metadata"] = {**(meta if isinstance(meta, dict) else {}), "total_size": total_size}
    return json.dumps(data, indent=2) + "\n"


def side_files(folder: str | os.PathLike, written: Iterable[str] = ()) -> list[str]:
    """The top-level files of a checkpoint folder copied to its patched counterpart: not hidden,
    not weights or weight indexes (:data:`WEIGHT_SUFFIXES`), not among ``written``."""
    skip = set(written)
    keep, left = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if name.startswith(".") or name in skip:
            continue
        if not entry.is_file():  # symlinks to files (the Hugging Face cache) count as files
            left.append(name + "/")
        elif name.lower().endswith(WEIGHT_SUFFIXES):
            left.append(name)
        else:
            keep.append(name)
    if left:
        logger.info("%s: not copied to the output: %s", os.fspath(folder), ", ".join(left))
    return keep


def copy_synced(src: str, dst: str) -> None:
    """Copy a file's bytes (through symlinks) and fsync the copy."""
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())
