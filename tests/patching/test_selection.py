from __future__ import annotations

import pytest
import torch

from rws.errors import UsageError
from rws.io.checkpoint import MemoryCheckpoint
from rws.models import create_model
from rws.patching.selection import by_energy, candidates, depth_order, group_layers, match, shallow


def test_layers_group_conv_with_following_norm_in_definition_order() -> None:
    ck = MemoryCheckpoint(create_model("small-cnn").state_dict())
    names = candidates(ck)
    assert "bn1.num_batches_tracked" not in names
    layers = group_layers(names, ck.shape)
    assert [la.name for la in layers] == ["conv1", "conv2", "conv3", "fc"]
    assert layers[0].tensors == (
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
    )
    assert [la.name for la in shallow(layers, 2)] == ["conv1", "conv2"]
    with pytest.raises(UsageError, match="--shallow 0: must be at least 1"):
        shallow(layers, 0)


def test_alphabetical_storage_order_is_recovered() -> None:
    names = sorted(
        [
            "conv1.weight",
            "bn1.weight",
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.1.conv1.weight",
            "layer2.0.conv1.weight",
            "layer10.0.conv1.weight",
            "fc.weight",
        ]
    )
    assert depth_order(names) == [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.1.conv1.weight",
        "layer2.0.conv1.weight",
        "layer10.0.conv1.weight",
        "fc.weight",
    ]
    definition = ["conv1.weight", "bn1.weight", "fc.weight"]
    assert depth_order(definition) == definition  # already not alphabetical: kept


def test_globs() -> None:
    names = ["conv1.weight", "bn1.weight", "bn1.bias", "fc.weight"]
    assert match(names, ["bn1.*"], None) == ["bn1.weight", "bn1.bias"]
    assert match(names, None, ["*.bias", "fc.*"]) == ["conv1.weight", "bn1.weight"]


def test_energy_takes_shallowest_layers_until_fraction() -> None:
    ck = MemoryCheckpoint(
        {"a.weight": torch.ones(2, 2), "b.weight": torch.ones(2, 2), "c.weight": torch.ones(2, 2)}
    )
    layers = group_layers(candidates(ck), ck.shape)
    assert [la.name for la in by_energy(layers, [0.5, 0.3, 0.2], 0.5)] == ["a"]
    assert [la.name for la in by_energy(layers, [0.5, 0.3, 0.2], 0.8)] == ["a", "b"]
    assert [la.name for la in by_energy(layers, [0.5, 0.3, 0.2], 1.0)] == ["a", "b", "c"]
    with pytest.raises(UsageError, match=r"--energy 1.5: must be in"):
        by_energy(layers, [1, 1, 1], 1.5)


def test_running_statistics_are_told_apart() -> None:
    from rws.patching.selection import is_running_stat, weights_only

    assert is_running_stat("layer1.0.bn1.running_mean") and is_running_stat("bn.running_var")
    assert not is_running_stat("bn.weight") and not is_running_stat("bn.num_batches_tracked")
    e = {"bn.weight": (1.0, 2.0), "bn.running_var": (3.0, 4.0)}
    assert weights_only(e) == {"bn.weight": (1.0, 2.0)}
