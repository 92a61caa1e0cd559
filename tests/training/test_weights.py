"""A run's weights (rws.training.weights): seeded initialisation, the result file's provenance."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rws.io.hashing import file_sha256, text_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.training import EpochStats, TrainConfig, TrainResult, init_model, save_result
from rws.training.weights import RESULT_KEY
from tests.training.conftest import same_weights


def test_init_model_is_seeded_and_leaves_the_global_rng() -> None:
    state = torch.get_rng_state()
    a, b = init_model("small-cnn", 10, seed=3), init_model("small-cnn", 10, seed=3)
    assert same_weights(a, b) and not same_weights(a, init_model("small-cnn", 10, seed=4))
    assert torch.equal(torch.get_rng_state(), state)


def test_save_result_records_a_sharded_source(tiny, tmp_path: Path) -> None:
    model = init_model("small-cnn", 10, seed=0)
    state = model.state_dict()
    names = sorted(state)
    shards = {"a.safetensors": names[:3], "b.safetensors": names[3:]}
    folder = tmp_path / "sharded"  # a sharded checkpoint: a folder with an index
    folder.mkdir()
    for file, keys in shards.items():
        save_tensors(folder / file, {k: state[k] for k in keys})
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    result = TrainResult(model, TrainConfig(epochs=1), [EpochStats(1, 0.01, 1.0, 0.5, 0.4, 0.6,
                                                                   2.0)], 1)  # fmt: skip
    out = tmp_path / "out.safetensors"
    meta = save_result(out, result, arch="small-cnn", data=tiny,
                       source=folder)  # fmt: skip
    files = sorted([*shards, "model.safetensors.index.json"])  # the index is part of the input
    digest = text_sha256("".join(file_sha256(folder / f) for f in files))
    assert meta["source"]["sha256"] == digest  # sha256 of the files' sha256s, sorted
    assert meta["history"] == [{"epoch": 1, "lr": 0.01, "train_loss": 1.0, "train_acc": 0.5,
                                "val_acc": 0.4, "val_clean_acc": 0.6}]  # fmt: skip
    assert "resumed_epochs" not in meta and meta["data"] == "digits-tiny"
    assert json.loads(TensorFile(out).metadata[RESULT_KEY]) == meta
