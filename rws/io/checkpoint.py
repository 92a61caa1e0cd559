"""Reading checkpoints one tensor at a time, whatever their container.

The container is told from the file's bytes (:mod:`rws.io.sniff`), the name only where they are
ambiguous: safetensors files (positioned reads, see ``TensorFile``), Hugging Face sharded folders
(``model.safetensors.index.json``), ``torch.save`` files, zip or legacy pickle, whatever their
suffix (timm's ``checkpoint-3.pth.tar``), loaded with ``torch.load(weights_only=True)`` and never
anything looser, in-memory state dicts and ``nn.Module``\\ s. A JSON file or unknown bytes are
refused in one line that says what the file is.

Training checkpoints are unwrapped to their weights: the first of :data:`rws.io.unwrap.WRAPPER_KEYS` holding a
state dict (``{"state_dict": …, "optimizer": …, "epoch": …}``, nested up to twice), then the
wrapper prefixes ``module.`` (DataParallel, DDP) and ``_orig_mod.`` (``torch.compile``) when every
name has them; live modules are taken out of those wrappers. What was done is listed in
:attr:`Checkpoint.unwrapped` and logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

import torch
from torch import nn

from rws.errors import CheckpointError, InputFileError, OutputPathError
from rws.io.atomic import is_folder_path
from rws.io.hashing import file_sha256
from rws.io.hub_fetch import resolve_path
from rws.io.hub_ref import hub_reference
from rws.io.outputs import check_input_file, check_output
from rws.io.pickled import load_pickle
from rws.io.safetensors_read import TensorFile
from rws.io.shard_index import shard_files
from rws.io.sniff import (
    EMPTY,
    JSON,
    LFS,
    SAFETENSORS,
    TORCH,
    other_format,
    read_head,
    show_head,
    sniff,
)
from rws.io.unwrap import find_state_dict, strip_prefixes, unwrap_module

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]  # noqa: UP007 (a runtime alias)
Source = Union[PathLike, nn.Module, Mapping[str, torch.Tensor], "Checkpoint"]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # usual names only: the bytes decide (sniff)
MAX_JSON_SNIFF = 16 << 20  # a JSON file read to tell a safetensors index


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """True for integer and bool dtypes (never patched)."""
    return not (dtype.is_floating_point or dtype.is_complex)


class Checkpoint:
    """A read-only mapping of tensor names to tensors, loaded lazily where the container allows.

    ``unwrapped`` lists what was taken off to reach the weights, e.g.
    ``["key 'state_dict'", "prefix 'module.'"]`` (empty when nothing was).
    """

    path: str
    metadata: dict[str, str]
    unwrapped: list[str]

    def keys(self) -> list[str]:
        """Tensor names in storage (definition) order."""
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        """One tensor (a CPU tensor; may be a read-only mmap view: do not modify it)."""
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of a tensor without loading it."""
        return tuple(self.get(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of a tensor without loading it."""
        return self.get(name).dtype

    def __contains__(self, name: object) -> bool:
        return name in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def numel(self) -> int:
        """Total number of elements over all tensors."""
        total = 0
        for k in self.keys():
            n = 1
            for s in self.shape(k):
                n *= s
            total += n
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, loaded."""
        return {k: self.get(k) for k in self.keys()}

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryCheckpoint(Checkpoint):
    """A checkpoint over an in-memory state dict (or a module's ``state_dict()``)."""

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        path: str = "<memory>",
        unwrapped: Iterable[str] = (),
    ) -> None:
        self.path = path
        self.metadata = {}
        self.unwrapped = list(unwrapped)
        self._t = dict(tensors)

    def keys(self) -> list[str]:
        return list(self._t)

    def __contains__(self, name: object) -> bool:
        return name in self._t

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t[name].dtype


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors files (a sharded folder is read through its index); wrapper
    prefixes on every name are stripped (see :func:`strip_prefixes`)."""

    def __init__(
        self, path: PathLike, files: dict[str, list[str]] | None = None, index: str | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.index = index  # a sharded folder's index file
        self._files = list(files) if files is not None else [self.path]
        stored: dict[str, TensorFile] = {}
        self.metadata = {}
        for file in self._files:
            tf = TensorFile(file)
            self.metadata.update(tf.metadata)
            for name in tf:
                if name in stored:
                    raise CheckpointError(file, f"tensor {name!r} appears in two shards")
                stored[name] = tf
        cut, self.unwrapped = strip_prefixes(stored)
        self._where = {name[len(cut) :]: (tf, name) for name, tf in stored.items()}

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        tf, stored = self._where[name]
        return tf.shape(stored)

    def dtype(self, name: str) -> torch.dtype:
        tf, stored = self._where[name]
        return tf.dtype(stored)

    def get(self, name: str) -> torch.Tensor:
        tf, stored = self._where[name]
        return tf.get(stored)

    def stored_name(self, name: str) -> str:
        """The name a tensor has in the file (with the wrapper prefixes that were stripped)."""
        return self._where[name][1]

    def files(self) -> list[str]:
        """The safetensors files this checkpoint reads (a sharded folder's shards)."""
        return list(self._files)

    def close(self) -> None:
        for tf in {id(tf): tf for tf, _ in self._where.values()}.values():
            tf.close()


class PickleCheckpoint(MemoryCheckpoint):
    """A ``torch.save`` file (zip or legacy pickle) loaded with ``torch.load(weights_only=True)``,
    unwrapped to its weights (:func:`rws.io.unwrap.find_state_dict`)."""

    def __init__(self, path: PathLike) -> None:
        p = os.fspath(path)
        obj = load_pickle(p)
        tensors, unwrapped = find_state_dict(obj, p)
        super().__init__(tensors, path=p, unwrapped=unwrapped)
        if isinstance(obj, Mapping) and unwrapped:  # entries beside the weights, e.g. timm's "arch"
            self.metadata = {k: str(v) for k, v in obj.items()
                             if isinstance(k, str) and isinstance(v, str | int | float)}  # fmt: skip


def open_checkpoint(source: Source) -> Checkpoint:
    """Open any supported checkpoint source lazily, unwrapped to its weights.

    Args:
        source: a path (a safetensors file, a sharded folder, a ``torch.save`` file: told by its
            bytes), an ``nn.Module`` (wrappers taken off), a state dict or training checkpoint
            dict, or an already open :class:`Checkpoint`.

    Raises:
        InputFileError: the path does not exist or cannot be read.
        CheckpointError: the file is not a readable checkpoint (JSON, unknown bytes …).
        UnsafeInputError: a pickle that ``weights_only`` loading refuses.
    """
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, nn.Module):
        inner, notes = unwrap_module(source)
        ck: Checkpoint = MemoryCheckpoint(
            inner.state_dict(), path=f"<{type(inner).__name__}>", unwrapped=notes
        )
        return _logged(ck)
    if isinstance(source, Mapping):
        tensors, notes = find_state_dict(source, "<memory>")
        return _logged(MemoryCheckpoint(tensors, unwrapped=notes))
    path = Path(resolve_path(source))  # hf:// references: fetched through the Hugging Face cache
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.is_file():
            return _logged(SafetensorsCheckpoint(path, shard_files(index), os.fspath(index)))
        if single.is_file():
            return _logged(SafetensorsCheckpoint(single))
        raise InputFileError(
            path, "folder has no model.safetensors or model.safetensors.index.json"
        )
    check_input_file(path)  # missing, or a FIFO or device (reading it would block)
    if not os.access(path, os.R_OK):
        raise InputFileError(path, "permission denied")
    return _logged(_open_file(path))


def _open_file(path: Path) -> Checkpoint:
    """Open a file by what its bytes are; its suffix decides only where they are ambiguous."""
    try:
        head, size = read_head(path)
    except OSError as err:
        raise InputFileError(path, f"cannot read ({err.strerror or err})") from None
    kind = sniff(head, size)
    if kind in TORCH:
        return PickleCheckpoint(path)
    if kind == SAFETENSORS:
        return SafetensorsCheckpoint(path)
    if kind == EMPTY:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    if kind == LFS:
        raise CheckpointError(path, "this is a Git LFS pointer, not weights; run `git lfs pull`")
    if kind == JSON:
        raise CheckpointError(
            path, "this is a JSON file, not a checkpoint" + _json_hint(path, size)
        )
    what = other_format(head)
    if what is not None:
        raise CheckpointError(
            path, f"this is {what}, not a checkpoint (it starts with {show_head(head)})"
        )
    if path.suffix.lower() == ".safetensors" or head[8:9] == b"{":  # damaged: read_header says how
        return SafetensorsCheckpoint(path)
    raise CheckpointError(
        path,
        "not a checkpoint: neither safetensors nor a torch.save zip or pickle "
        f"(it starts with {show_head(head)})",
    )


def _json_hint(path: Path, size: int) -> str:
    if size > MAX_JSON_SNIFF:
        return ""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # a hint only: crafted JSON gets none
        return ""
    if isinstance(data, dict) and "weight_map" in data:
        return "; it is a safetensors index: give the folder that holds the shards"
    return ""


def _logged(ck: Checkpoint) -> Checkpoint:
    kind = {SafetensorsCheckpoint: "safetensors (read lazily)",
            PickleCheckpoint: "torch.save (weights_only=True)"}.get(type(ck), "in memory")  # fmt: skip
    logger.info("%s: read as %s, %d tensors", ck.path, kind, len(ck))
    if ck.unwrapped:
        logger.info("%s: took the weights from %s", ck.path, ", ".join(ck.unwrapped))
    return ck


def describe_source(source: Source) -> dict[str, str]:
    """Provenance of a source: its file name and sha256, or its in-memory label."""
    if isinstance(source, Checkpoint):
        path = source.path
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
    else:
        path = "<memory>"
    local = os.fspath(resolve_path(path))  # an hf:// reference is recorded pinned to its commit
    if os.path.isfile(local):
        name = hub_reference(local) or os.path.basename(local)
        return {"path": name, "sha256": file_sha256(local)}
    return {"path": hub_reference(local) or path}


def input_paths(source: Source) -> list[str]:
    """Real paths of the files a source reads (to refuse writing an output over an input)."""
    if isinstance(source, SafetensorsCheckpoint):  # a sharded folder: its index counts too
        return [os.path.realpath(f) for f in [*source.files(), *filter(None, [source.index])]]
    if isinstance(source, Checkpoint | nn.Module | Mapping):
        path = getattr(source, "path", "")
        return [os.path.realpath(path)] if path and os.path.exists(path) else []
    path = Path(source)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [os.path.realpath(f) for f in [*shard_files(index), index]]
    if path.is_dir() and (path / "model.safetensors").is_file():
        return [os.path.realpath(path / "model.safetensors")]
    return [os.path.realpath(path)]


def check_output_path(output: PathLike, sources: Iterable[Source], *, folder: bool = False) -> str:
    """Refuse an output path that would overwrite an input or is of the wrong kind; return it as
    a string.

    Every input's files count (a sharded folder's index and shards). ``folder``: the output is a
    folder (written for a checkpoint folder), refused when it is an input folder or lies inside
    one, is a file, or is a folder that is not empty. Otherwise it is a file, refused when it is
    a folder or is written as one (``out/``). Then :func:`rws.io.outputs.check_output`: no
    device, FIFO or system path, nothing inside the Hugging Face cache.

    Raises:
        OutputPathError: any of the above.
    """
    out = os.path.realpath(output)
    sources = list(sources)
    inputs = [p for src in sources for p in input_paths(src)]
    if out in inputs:
        raise OutputPathError(output, "is also an input; write to another path")
    if not folder:
        if is_folder_path(output):
            raise OutputPathError(output, "is a folder; give a file path")
        check_output(output, inputs)
        return os.fspath(output)
    for src in sources:
        path = src.path if isinstance(src, Checkpoint) else src
        if not isinstance(path, str | os.PathLike) or not os.path.isdir(path):
            continue
        inside = os.path.realpath(path)
        if out == inside:
            raise OutputPathError(output, "is the input folder; write to another folder")
        if out.startswith(inside.rstrip(os.sep) + os.sep):
            raise OutputPathError(
                output, f"is inside the input folder {os.fspath(path)}; write it elsewhere"
            )
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputPathError(output, "is a file; the input is a folder: give a folder path")
    if os.path.isdir(out) and os.listdir(out):
        raise OutputPathError(output, "is a folder that is not empty; give a new or empty folder")
    check_output(output, inputs, folder=True)
    return os.fspath(output)
