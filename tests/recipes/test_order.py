"""recorded_arch: the architecture a checkpoint records, whatever its container."""

from __future__ import annotations

import torch

from rws.io.safetensors_write import save_tensors
from rws.models import resolve_model
from rws.recipes.order import recorded_arch


def test_arch_beside_the_weights_of_a_training_checkpoint(tmp_path) -> None:
    state = resolve_model("small-cnn", num_classes=10).state_dict()
    path = tmp_path / "checkpoint-3.pth.tar"  # the name timm's train script writes
    torch.save({"epoch": 3, "arch": "small-cnn", "state_dict": state}, path)
    assert recorded_arch(path) == "small-cnn"
    torch.save(state, tmp_path / "flat.pt")
    assert recorded_arch(tmp_path / "flat.pt") is None
    save_tensors(tmp_path / "m.safetensors", state, {"arch": "resnet20"})
    assert recorded_arch(tmp_path / "m.safetensors") == "resnet20"
    assert recorded_arch(state) is None
