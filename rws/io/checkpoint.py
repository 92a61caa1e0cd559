"""Reading checkpoints one tensor at a time, whatever their container.

Sources: ``.safetensors`` files (positioned reads, see ``TensorFile``), Hugging Face sharded folders
(``model.safetensors.index.json``), pickled ``.pt/.pth/.bin`` files
(``torch.load(weights_only=True)``, never anything looser), in-memory state dicts and ``nn.Module``s.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from rws.errors import CheckpointError, InputFileError, OutputPathError, UnsafeInputError
from rws.io.hashing import file_sha256
from rws.io.hub_fetch import resolve_path
from rws.io.hub_ref import hub_reference
from rws.io.safetensors_read import TensorFile

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]  # noqa: UP007 (a runtime alias)
Source = Union[PathLike, nn.Module, Mapping[str, torch.Tensor], "Checkpoint"]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFE_TORCH = (2, 10)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """True for integer and bool dtypes (never patched)."""
    return not (dtype.is_floating_point or dtype.is_complex)


class Checkpoint:
    """A read-only mapping of tensor names to tensors, loaded lazily where the container allows."""

    path: str
    metadata: dict[str, str]

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

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: str = "<memory>") -> None:
        self.path = path
        self.metadata = {}
        self._t = dict(tensors)

    def keys(self) -> list[str]:
        return list(self._t)

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t[name].dtype


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors files (a sharded folder is read through its index)."""

    def __init__(self, path: PathLike, files: dict[str, list[str]] | None = None) -> None:
        self.path = os.fspath(path)
        self._files = list(files) if files is not None else [self.path]
        self._where: dict[str, TensorFile] = {}
        self.metadata = {}
        for file in self._files:
            tf = TensorFile(file)
            self.metadata.update(tf.metadata)
            for name in tf:
                if name in self._where:
                    raise CheckpointError(file, f"tensor {name!r} appears in two shards")
                self._where[name] = tf

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._where[name].dtype(name)

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get(name)

    def files(self) -> list[str]:
        """The files this checkpoint reads."""
        return list(self._files)

    def close(self) -> None:
        for tf in set(self._where.values()):
            tf.close()


class PickleCheckpoint(MemoryCheckpoint):
    """A pickled state dict loaded with ``torch.load(weights_only=True)``."""

    def __init__(self, path: PathLike) -> None:
        p = os.fspath(path)
        if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < SAFE_TORCH:
            raise UnsafeInputError(
                p, f"torch {torch.__version__} cannot load pickles safely; use torch >= 2.10"
            )
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            detail = _unpickling_detail(err)
            if "global" in detail.lower():  # torch names the blocked import: code, not data
                raise UnsafeInputError(
                    p, f"refused: the pickle needs more than plain tensors ({detail})"
                ) from None
            raise CheckpointError(p, f"not a readable torch checkpoint ({detail})") from None
        except (RuntimeError, EOFError, IndexError, ValueError, struct.error, OSError) as err:
            raise CheckpointError(p, f"not a readable torch checkpoint ({_oneline(err)})") from None
        super().__init__(_unwrap_state_dict(obj, p), path=p)


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(
                path, f"entry {k!r} is a {type(v).__name__}, not a tensor: not a flat state dict"
            )
        out[k] = v
    if out and all(k.startswith("module.") for k in out):  # saved from DataParallel / DDP
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _unpickling_detail(err: BaseException) -> str:
    """The informative line of torch's multi-paragraph ``weights_only`` error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    boiler = ("Please file an issue", "Check the documentation", "WeightsUnpickler error")
    detail = [ln for ln in lines[1:] if not ln.startswith(boiler)]
    return (detail[0] if detail else lines[0] if lines else type(err).__name__)[:200]


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def open_checkpoint(source: Source) -> Checkpoint:
    """Open any supported checkpoint source lazily.

    Args:
        source: a path (``.safetensors``, sharded folder, ``.pt/.pth/.bin/.ckpt``), an
            ``nn.Module``, a state dict, or an already open :class:`Checkpoint`.

    Raises:
        InputFileError: the path does not exist or cannot be read.
        CheckpointError: the file is not a readable checkpoint.
        UnsafeInputError: a pickle that ``weights_only`` loading refuses.
    """
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, nn.Module):
        return MemoryCheckpoint(source.state_dict(), path=f"<{type(source).__name__}>")
    if isinstance(source, Mapping):
        return MemoryCheckpoint(source)
    path = Path(resolve_path(source))  # hf:// references: fetched through the Hugging Face cache
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.is_file():
            return SafetensorsCheckpoint(path, _shards(index))
        if single.is_file():
            return SafetensorsCheckpoint(single)
        raise InputFileError(
            path, "folder has no model.safetensors or model.safetensors.index.json"
        )
    if not path.exists():
        raise InputFileError(path, "no such file")
    if not os.access(path, os.R_OK):
        raise InputFileError(path, "permission denied")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return PickleCheckpoint(path)
    return SafetensorsCheckpoint(path)


def _shards(index: Path) -> dict[str, list[str]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(index, "not a valid safetensors index (no weight_map)") from None
    files: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        files.setdefault(os.fspath(index.parent / shard), []).append(name)
    for file in files:
        if not os.path.isfile(file):
            raise InputFileError(file, "shard listed in the index is missing")
    return files


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
    if isinstance(source, SafetensorsCheckpoint):
        return [os.path.realpath(f) for f in source.files()]
    if isinstance(source, Checkpoint | nn.Module | Mapping):
        path = getattr(source, "path", "")
        return [os.path.realpath(path)] if path and os.path.exists(path) else []
    path = Path(source)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [os.path.realpath(f) for f in _shards(index)]
    return [os.path.realpath(path)]


def check_output_path(output: PathLike, sources: Iterable[Source]) -> str:
    """Refuse an output path that is one of the inputs or a folder; return it as a string.

    Raises:
        OutputPathError: ``output`` would overwrite an input, or is a folder.
    """
    out = os.path.realpath(output)
    for src in sources:
        if out in input_paths(src):
            raise OutputPathError(output, "is also an input; write to another path")
    if os.path.isdir(out):
        raise OutputPathError(output, "is a folder; give a file path")
    return os.fspath(output)
