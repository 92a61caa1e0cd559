"""A Hugging Face sharded folder's index (``model.safetensors.index.json``), read strictly:
strict JSON (:func:`rws.io.json_read.loads_strict`), a ``weight_map`` of tensor names to file
names, every shard inside the folder."""

from __future__ import annotations

import os
from pathlib import Path

from rws.errors import CheckpointError, InputFileError
from rws.io.json_read import loads_strict
from rws.io.outputs import check_input_file, note_input

MAX_INDEX = 64 << 20  # bytes of a safetensors index read (Hugging Face's are under 1 MB)


def shard_files(index: Path) -> dict[str, list[str]]:
    """A sharded folder's shard files and the tensors each holds, from its index.

    Raises:
        MalformedInputError: not JSON, duplicate keys, no ``weight_map`` of names to file names, or a
            shard named outside the folder (``../x``, an absolute path).
        InputFileError: a listed shard is missing.
    """
    check_input_file(index)
    if index.stat().st_size > MAX_INDEX:
        raise CheckpointError(index, f"a safetensors index over {MAX_INDEX >> 20} MiB")
    try:
        raw = index.read_bytes()
    except OSError as err:
        raise InputFileError(index, f"cannot read ({err.strerror or err})") from None
    data = loads_strict(raw, index, "the safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            index, "not a valid safetensors index (weight_map must map tensor names to files)"
        )
    folder = os.path.realpath(index.parent)
    files: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        path = os.path.join(index.parent, shard)
        inside = os.path.realpath(path).startswith(folder + os.sep)
        if os.path.isabs(shard) or ".." in Path(shard).parts or not shard or not inside:
            raise CheckpointError(index, f"shard {shard!r} lies outside the folder")
        files.setdefault(os.fspath(index.parent / shard), []).append(name)
    for file in files:
        if not os.path.isfile(file):
            raise InputFileError(file, "shard listed in the index is missing")
        note_input(file)
    return files
