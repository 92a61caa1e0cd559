"""What a training run keeps: the checkpoint ``train_state.safetensors`` and the resume checks.

The checkpoint holds no pickle; it is laid out as:

- ``model.<name>``: every tensor of the model's ``state_dict()`` (buffers included);
- ``opt.state.<index>.<key>``: every tensor of the optimizer's per-parameter state, e.g.
  ``opt.state.3.momentum_buffer`` or ``opt.state.0.step``;
- ``rng.train``: the training ``torch.Generator``'s state (uint8);
- ``best.<name>``: (``keep_best`` runs) the state dict of the best epoch so far;
- ``__metadata__["rws.train_state"]``: JSON with ``format``, ``epoch`` (completed epochs), the
  optimizer's ``param_groups`` and non-tensor state values, the config, the history and the
  fingerprints of the initial weights and of the data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rws.data.types import ImageDataset
from rws.errors import CheckpointError, IntegrityError, UsageError
from rws.io.hashing import state_sha256, text_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.training.config import TrainConfig

STATE_FILE = "train_state.safetensors"
META_KEY = "rws.train_state"
FORMAT = 1
_MAY_CHANGE_ON_RESUME = ("epochs", "device", "extra")
_MODEL, _OPT, _RNG, _BEST = "model.", "opt.state.", "rng.train", "best."


@dataclass
class TrainState:
    """What a training checkpoint holds.

    Attributes:
        model: the model's state dict.
        optimizer: an optimizer ``state_dict()`` (integer parameter indices as keys).
        generator: the training generator's state (``torch.Generator.get_state()``).
        epoch: completed epochs.
        info: the trainer's own JSON-able facts (config, history, fingerprints).
        best: the state dict of the best epoch so far (``keep_best`` runs), else None.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    epoch: int
    info: dict[str, Any]
    best: dict[str, torch.Tensor] | None = None


def flatten_optimizer_state(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict()`` into named tensors and JSON-able rest.

    Returns:
        ``({"opt.state.<i>.<key>": tensor}, {"param_groups": [...], "values": {"<i>": {key: v}}})``
        where ``values`` keeps the per-parameter state entries that are not tensors.
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT}{int(idx)}.{key}"] = value.detach().cpu()
            else:
                values.setdefault(str(int(idx)), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in state_dict["param_groups"]]  # fmt: skip
    return tensors, {"param_groups": groups, "values": values}


def unflatten_optimizer_state(
    tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (lists other than ``params`` become tuples)."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        idx, _, key = name[len(_OPT) :].partition(".")
        state.setdefault(int(idx), {})[key] = t
    for idx, entry in rest["values"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in rest["param_groups"]]  # fmt: skip
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def save_train_state(path: str | os.PathLike, state: TrainState) -> None:
    """Write a training checkpoint atomically (temp file, fsync, rename)."""
    opt_tensors, opt_rest = flatten_optimizer_state(state.optimizer)
    tensors = {_MODEL + k: v.detach() for k, v in state.model.items()}
    tensors.update(opt_tensors)
    tensors[_RNG] = state.generator
    if state.best is not None:
        tensors.update({_BEST + k: v.detach() for k, v in state.best.items()})
    meta = {"format": FORMAT, "epoch": state.epoch, "optimizer": opt_rest, **state.info}
    save_tensors(path, tensors, {META_KEY: json.dumps(meta)})


def load_train_state(path: str | os.PathLike) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state`.

    Raises:
        InputFileError: unreadable file. CheckpointError: not a training checkpoint of this format.
    """
    tf = TensorFile(path)
    try:
        try:
            meta = json.loads(tf.metadata[META_KEY])
            epoch, opt_rest = int(meta.pop("epoch")), meta.pop("optimizer")
            fmt = meta.pop("format")
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            raise CheckpointError(
                path, f"not an rws training checkpoint (no valid {META_KEY!r} metadata)"
            ) from None
        if fmt != FORMAT:
            raise CheckpointError(path, f"training checkpoint format {fmt!r}; this rws reads 1")
        if _RNG not in tf:
            raise CheckpointError(path, f"training checkpoint without {_RNG!r}")
        model = {k[len(_MODEL) :]: tf.get(k) for k in tf if k.startswith(_MODEL)}
        opt = unflatten_optimizer_state({k: tf.get(k) for k in tf if k.startswith(_OPT)}, opt_rest)
        best = {k[len(_BEST) :]: tf.get(k) for k in tf if k.startswith(_BEST)}
        return TrainState(model, opt, tf.get(_RNG), epoch, meta, best or None)
    finally:
        tf.close()


def data_fingerprint(data: ImageDataset) -> dict[str, Any]:
    """Name, size and one sha256 of the training and validation images and labels."""
    parts = [
        f"{list(split.x.shape)}|"
        + state_sha256({"x": split.x.contiguous(), "y": split.y.contiguous()})
        for split in (data.train, data.val)
    ]
    return {"name": data.name, "n_train": len(data.train), "sha256": text_sha256("".join(parts))}


def check_resume(st: TrainState, path: Path, config: TrainConfig, info: Mapping[str, Any]) -> None:
    """Refuse to continue ``st`` under ``config`` unless it is the same run.

    ``info`` holds this run's ``init_sha256`` and ``data`` fingerprints. ``epochs`` may grow when
    the completed epochs' learning rates stay the same; ``device`` may change.

    Raises:
        UsageError: another config. IntegrityError: other initial weights or data.
        CheckpointError: no readable config in the checkpoint.
    """
    try:
        old = TrainConfig.from_dict(st.info["config"])
    except (KeyError, TypeError, UsageError) as exc:
        raise CheckpointError(path, f"holds no valid training config ({exc})") from None
    diffs = [
        f"{f.name} {getattr(old, f.name)!r} → {getattr(config, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _MAY_CHANGE_ON_RESUME and getattr(old, f.name) != getattr(config, f.name)
    ]
    if diffs:
        raise UsageError(
            f"{path}: holds a run with another config ({'; '.join(diffs)}); resume with the "
            "same options or use a new checkpoint folder"
        )
    if st.epoch > config.epochs:
        raise UsageError(
            f"{path}: already holds {st.epoch} epochs, more than the {config.epochs} asked for"
        )
    done = [h["lr"] for h in st.info.get("history", [])]
    if done != [config.lr_at(e) for e in range(st.epoch)]:
        raise UsageError(
            f"{path}: its {st.epoch} completed epochs followed another learning-rate schedule than "
            f"{config.epochs} epochs of {config.schedule!r} would; use a new checkpoint folder"
        )
    if st.info.get("init_sha256") != info["init_sha256"]:
        raise IntegrityError(
            f"{path}: the run started from other initial weights; pass the same weights (or "
            "seed) or use a new checkpoint folder"
        )
    if st.info.get("data") != info["data"]:
        raise IntegrityError(
            f"{path}: the run used other data ({st.info.get('data', {}).get('name')!r}); pass "
            "the same data or use a new checkpoint folder"
        )
