"""Depth order from the computation (issue 14): forward-pass order against the name heuristic on
files whose names were sorted, a ViT-like parameter used in its parent's forward, order files,
and the forward pass leaving the model as it was."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rws.errors import CheckpointError, InputFileError, UsageError
from rws.io.checkpoint import MemoryCheckpoint, open_checkpoint
from rws.methods.extract import extract
from rws.patching.order import (
    GUESSED,
    STORAGE,
    DepthOrder,
    checkpoint_order,
    example_inputs,
    forward_order,
    order_from_file,
    resolve_order,
)


class SortedAgainst(nn.Module):
    """Attribute names that sort against the computation: ``zeta`` runs first, ``alpha`` last."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.alpha = nn.Linear(6, num_classes)  # the head, defined first
        self.mid = nn.Conv2d(4, 6, 3, padding=1)
        self.mid_bn = nn.BatchNorm2d(6)
        self.zeta = nn.Conv2d(3, 4, 3, padding=1)  # the stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha(self.mid_bn(self.mid(self.zeta(x))).mean((2, 3)))


class TinyViT(nn.Module):
    """A ViT in miniature: ``cls_token``/``pos_embed`` used in the root's own forward, after the
    patch embedding; the head defined before the trunk."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, 4))  # 32×32 input, 8×8 patches: 16 + 1
        self.head = nn.Linear(4, num_classes)
        self.patch_embed = nn.Conv2d(3, 4, 8, 8)
        self.blocks = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def sorted_toy(num_classes: int = 3) -> nn.Module:
    """Factory for ``--order-from tests.patching.test_order:sorted_toy`` (and ``--arch``)."""
    torch.manual_seed(0)
    return SortedAgainst(num_classes)


def shifted(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every float tensor moved a little (a stand-in fine-tune)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        moved = v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        out[k] = moved.abs() if k.endswith("running_var") else moved
    return out


def sorted_files(model: nn.Module, folder: Path) -> tuple[Path, Path]:
    """Clean and tuned checkpoints written with ``safetensors.save_file`` (names sorted)."""
    clean, tuned = folder / "clean.safetensors", folder / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, clean)
    save_file(shifted(model), tuned)
    return clean, tuned


def test_forward_order_follows_the_computation_not_definition_or_names() -> None:
    order = forward_order(SortedAgainst(), (1, 3, 8, 8))
    assert order.source == "forward pass of SortedAgainst" and order.unreached == ()
    assert order.names == (
        "zeta.weight", "zeta.bias", "mid.weight", "mid.bias",
        # one call (batch_norm): storage order among its tensors; the unused counter follows them
        "mid_bn.weight", "mid_bn.bias", "mid_bn.running_mean", "mid_bn.running_var",
        "mid_bn.num_batches_tracked", "alpha.weight", "alpha.bias",
    )  # fmt: skip


def test_sorted_file_guess_picks_the_wrong_layers_the_forward_pass_the_right_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = SortedAgainst()
    clean, tuned = sorted_files(model, tmp_path)
    assert checkpoint_order(open_checkpoint(clean)).guessed
    with caplog.at_level(logging.WARNING):
        guessed = extract(clean, tuned, shallow=2)
    assert guessed.provenance["selection"]["layers"] == ["alpha", "mid"]  # the head: wrong
    assert guessed.provenance["selection"]["order"] == {"source": GUESSED, "count": 3}
    assert "guessed from the names" in caplog.text
    right = extract(clean, tuned, shallow=2, order=model)
    assert right.provenance["selection"]["layers"] == ["zeta", "mid"]
    assert right.names()[:2] == ["zeta.weight", "zeta.bias"]
    assert right.provenance["selection"]["order"] == {
        "source": "forward pass of SortedAgainst", "count": 3
    }  # fmt: skip
    tuned_model = SortedAgainst()
    tuned_model.load_state_dict(shifted(model))
    live = extract(model, tuned_model, shallow=2)  # a live module: its own forward pass
    assert live.provenance["selection"]["layers"] == ["zeta", "mid"]
    assert live.provenance["selection"]["order"]["source"] == "forward pass of SortedAgainst"


def test_vit_cls_token_comes_after_the_patch_embedding_and_the_head_last(tmp_path: Path) -> None:
    model = TinyViT()
    order = forward_order(model)  # the input shape is guessed from the patch embedding
    assert order.names[:4] == ("patch_embed.weight", "patch_embed.bias", "cls_token", "pos_embed")
    assert order.names[-2:] == ("head.weight", "head.bias")
    clean, tuned = sorted_files(model, tmp_path)
    guessed = extract(clean, tuned, shallow=2)
    assert guessed.provenance["selection"]["layers"] == ["cls_token", "head"]  # the report
    assert set(guessed.names()) == {"cls_token", "head.weight", "head.bias"}
    right = extract(clean, tuned, shallow=2, order=order)
    assert right.provenance["selection"]["layers"] == ["patch_embed", "cls_token"]


def test_storage_order_is_kept_where_it_is_no_guess() -> None:
    ck = MemoryCheckpoint(SortedAgainst().state_dict())  # definition order: not sorted
    order = checkpoint_order(ck)
    assert order.source == STORAGE and list(order.names) == ck.keys()


def test_unreached_tensors_go_last_in_storage_order_and_are_reported() -> None:
    model = SortedAgainst()
    model.spare = nn.Linear(2, 2)
    model.aside = nn.Linear(2, 2)  # registered after `spare`: storage order spare, aside
    order = forward_order(model, (1, 3, 8, 8))
    assert order.unreached == ("spare.weight", "spare.bias", "aside.weight", "aside.bias")
    assert order.names[-4:] == order.unreached and order.names[-6:-4] == (
        "alpha.weight",
        "alpha.bias",
    )
    assert order.missing(["zeta.weight", "aside.bias", "other"]) == ["aside.bias", "other"]
    assert order.sort(["other", "aside.bias", "zeta.weight"]) == [
        "zeta.weight",
        "aside.bias",
        "other",
    ]


def test_modes_come_back_and_hooks_go_also_when_the_pass_fails() -> None:
    model = SortedAgainst().train()
    model.mid_bn.eval()  # a frozen BatchNorm keeps its own mode
    forward_order(model, (2, 3, 8, 8))
    assert model.training and not model.mid_bn.training and model.zeta.training
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(
        UsageError,
        match=r"forward pass of SortedAgainst failed on an input of shape \(1, 5, 8, 8\)",
    ):
        forward_order(model, (1, 5, 8, 8))
    assert model.training and not model.mid_bn.training
    assert all(not m._forward_pre_hooks for m in model.modules())
    running = model.mid_bn.running_mean.clone()
    forward_order(model.train(), torch.rand(4, 3, 8, 8))
    assert torch.equal(model.mid_bn.running_mean, running)  # eval mode: statistics untouched


def test_guessed_input_shapes() -> None:
    assert example_inputs(SortedAgainst()) == [(1, 3, 32, 32), (1, 4, 32, 32), (1, 6)]
    assert forward_order(SortedAgainst()).names[0] == "zeta.weight"  # 3-channel conv tried first
    with pytest.raises(UsageError, match="cannot guess an input shape"):
        forward_order(nn.Sequential(nn.ReLU()))


def test_order_files_and_names(tmp_path: Path) -> None:
    model = SortedAgainst()
    right = forward_order(model, (1, 3, 8, 8)).names
    (tmp_path / "names.json").write_text(json.dumps(list(right)))
    assert order_from_file(tmp_path / "names.json") == DepthOrder(right, "name list names.json")
    torch.save({n: model.state_dict()[n] for n in right}, tmp_path / "ref.pt")
    from_pt = order_from_file(tmp_path / "ref.pt")
    assert from_pt.names == right and from_pt.source == "storage order of ref.pt"
    (tmp_path / "bad.json").write_text('{"zeta.weight": 0}')
    with pytest.raises(CheckpointError, match="not a JSON list of tensor names"):
        order_from_file(tmp_path / "bad.json")
    with pytest.raises(InputFileError, match="no such file"):
        order_from_file(tmp_path / "missing.json")
    ck = MemoryCheckpoint(model.state_dict())
    assert resolve_order(["zeta.weight"], ck).source == "given name list"
    with pytest.raises(UsageError, match="none of its tensor names is in"):
        resolve_order(["fc.weight"], ck)
