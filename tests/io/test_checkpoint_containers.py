"""Checkpoint containers told by their bytes, training checkpoints unwrapped to their weights,
wrapper prefixes stripped, and pickles that ``weights_only`` refuses named with their imports."""

from __future__ import annotations

import argparse
import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rws.errors import CheckpointError, UnsafeInputError
from rws.io.checkpoint import open_checkpoint
from rws.io.sniff import JSON, PICKLE, SAFETENSORS, TAR, UNKNOWN, ZIP, read_head, sniff
from rws.io.unwrap import find_state_dict, strip_prefixes, unwrap_module
from tests.conftest import run

REPO = Path(__file__).resolve().parents[2]
# torch.jit and the first torch.compile (importing dynamo) warn that torch.jit is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def _same(ck_keys: list[str], got: Callable[[str], torch.Tensor], sd: dict) -> bool:
    """The same names (in any order: safetensors stores by dtype) and the same tensors."""
    return sorted(ck_keys) == sorted(sd) and all(torch.equal(got(k), v) for k, v in sd.items())


def _optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 5, 5)).sum().backward()
    opt.step()
    return opt.state_dict()


# --- the container, from the bytes -------------------------------------------------------------


def _zip(sd: dict, p: Path) -> None:
    torch.save({"state_dict": sd, "epoch": 3}, p)


def _legacy(sd: dict, p: Path) -> None:
    torch.save(sd, p, _use_new_zipfile_serialization=False)


def _safetensors(sd: dict, p: Path) -> None:
    save_file(sd, p)


@pytest.mark.parametrize(
    ("name", "write", "kind"),
    [
        ("checkpoint-3.pth.tar", _zip, ZIP),  # what timm's train script writes
        ("weights", _zip, ZIP),
        ("legacy.tar", _legacy, PICKLE),
        ("model.safetensors.pt", _safetensors, SAFETENSORS),
        ("model.bin", _safetensors, SAFETENSORS),
    ],
)
def test_the_container_is_told_by_its_bytes_not_its_suffix(
    tmp_path: Path, name: str, write: Callable[[dict, Path], None], kind: str
) -> None:
    sd = _net().state_dict()
    write(sd, tmp_path / name)
    assert sniff(*read_head(tmp_path / name)) == kind
    with open_checkpoint(tmp_path / name) as ck:
        assert _same(ck.keys(), ck.get, sd)
        assert ck.unwrapped == (["key 'state_dict'"] if write is _zip else [])


def test_sniff_tells_a_safetensors_header_length_that_starts_like_a_pickle(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    header = header.ljust(0x280).encode()  # length 640: bytes 80 02 …, a pickle's first bytes
    raw = struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)
    (tmp_path / "w.pt").write_bytes(raw)
    assert raw[:2] == b"\x80\x02" and sniff(raw, len(raw)) == SAFETENSORS
    assert torch.equal(open_checkpoint(tmp_path / "w.pt").get("w"), torch.tensor([1.0, 2.0]))
    assert sniff(b"PK\x03\x04rest", 8) == ZIP and sniff(b"\x80\x04\x95", 3) == PICKLE
    assert sniff(b" \n [1, 2]", 9) == JSON and sniff(b"\xef\xbb\xbf{}", 5) == JSON
    assert sniff(b"x" * 257 + b"ustar", 262) == TAR and sniff(b"\x00\x01\x02", 3) == UNKNOWN


def test_a_json_file_is_named_as_such(tmp_path: Path) -> None:
    index = REPO / "signatures" / "index.json"
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(index)
    assert str(e.value) == f"{index}: this is a JSON file, not a checkpoint"
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(
        CheckpointError,
        match=r"this is a JSON file, not a checkpoint; it is a safetensors index: give the folder",
    ):
        open_checkpoint(tmp_path / "m.safetensors.index.json")
    code, out, err = run("inspect", index)
    assert code == 3 and out == ""
    assert err.strip().splitlines() == [f"error: {index}: this is a JSON file, not a checkpoint"]


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (
            "m.bin",
            b"\x00\x01garbage bytes here",
            r"m\.bin: not a checkpoint: neither safetensors nor a torch\.save zip or pickle "
            r"\(it starts with b'\\x00\\x01garbage bytes '…\)",
        ),
        ("m.pt", b"\x1f\x8b\x08\x00abc", r"m\.pt: this is a gzip archive, not a checkpoint"),
        ("m.pth", b"<!DOCTYPE html><html>", r"m\.pth: this is an HTML page \(a failed download"),
        ("m.safetensors", b"", r"m\.safetensors: the file is empty \(0 bytes\)"),
    ],
)
def test_unknown_bytes_are_named_in_one_line(
    tmp_path: Path, name: str, raw: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(CheckpointError, match=message) as e:
        open_checkpoint(tmp_path / name)
    assert "\n" not in str(e.value) and e.value.exit_code == 3


def test_a_torchscript_archive_is_named_and_never_loaded(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointError, match=r"scripted\.pt: this is a TorchScript archive") as e:
        open_checkpoint(tmp_path / "scripted.pt")
    assert "weights_only" not in str(e.value)


# --- training checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("state_dict", {"epoch": 3, "arch": "net", "best_acc1": 71.2}),  # timm, torchvision
        ("model", {"epoch": 3, "lr_scheduler": {"last_epoch": 3}}),
        ("model_state_dict", {"epoch": 3, "loss": 0.25}),  # the PyTorch tutorial
        ("module", {"global_steps": 100, "dp_world_size": 1}),  # DeepSpeed
        ("net", {"acc": 0.9}),
    ],
)
def test_training_checkpoints_give_their_weights_and_say_which_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str, extra: dict
) -> None:
    model = _net()
    sd = model.state_dict()
    ckpt = {key: sd, "optimizer": _optimizer_state(model), **extra}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    with caplog.at_level(logging.INFO, logger="rws.io.checkpoint"):
        ck = open_checkpoint(tmp_path / "ckpt.pth")
    assert _same(ck.keys(), ck.get, sd) and ck.unwrapped == [f"key {key!r}"]
    assert f"ckpt.pth: took the weights from key {key!r}" in caplog.text
    mem = open_checkpoint(ckpt)  # the same dict in memory
    assert _same(mem.keys(), mem.get, sd) and mem.unwrapped == [f"key {key!r}"]


def test_nested_twice_and_the_first_of_several_candidates(tmp_path: Path) -> None:
    sd, ema = _net(0).state_dict(), _net(1).state_dict()
    torch.save({"model": {"state_dict": sd, "step": 7}, "ema": ema}, tmp_path / "a.pt")
    ck = open_checkpoint(tmp_path / "a.pt")
    assert _same(ck.keys(), ck.get, sd)
    assert ck.unwrapped == ["key 'model' (also found: 'ema')", "key 'state_dict'"]
    torch.save({"state_dict_ema": ema, "state_dict": sd}, tmp_path / "b.pt")  # order: documented
    ck = open_checkpoint(tmp_path / "b.pt")
    assert _same(ck.keys(), ck.get, sd)
    assert ck.unwrapped == ["key 'state_dict' (also found: 'state_dict_ema')"]


def test_a_checkpoint_without_a_state_dict_says_where_it_looked(tmp_path: Path) -> None:
    sd = _net().state_dict()
    with pytest.raises(
        CheckpointError, match=r"entry 'step' under 'state_dict' is an int, not a tensor"
    ):
        find_state_dict({"state_dict": {**sd, "step": 3}}, "x.pt")
    with pytest.raises(
        CheckpointError,
        match=r"entry 'weights' is an OrderedDict, not a tensor: not a flat state dict; the "
        r"weights are looked for under state_dict, model, model_state_dict, module, net, …",
    ):
        find_state_dict({"weights": sd, "epoch": 1}, "x.pt")
    with pytest.raises(
        CheckpointError, match=r"^x\.pt: entry 'state_dict' under 'model' is a list, not a tensor"
    ):
        find_state_dict({"model": {"state_dict": [1]}, "epoch": 1}, "x.pt")
    with pytest.raises(CheckpointError, match=r"^x\.pt: holds a list, not a state dict$"):
        find_state_dict([sd], "x.pt")


# --- wrapper prefixes, in files and on live modules --------------------------------------------


def _wrapped_state(wrap: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model's state dict, and that of the model wrapped as named (real wrapper objects:
    building ``torch.compile(m)`` compiles nothing until its first call)."""
    model = _net()
    wrapped = {
        "module": lambda m: nn.DataParallel(m),
        "_orig_mod": lambda m: torch.compile(m),
        "module._orig_mod": lambda m: nn.DataParallel(torch.compile(m)),
        "_orig_mod.module": lambda m: torch.compile(nn.DataParallel(m)),
    }[wrap](model)
    return model.state_dict(), wrapped.state_dict()


@pytest.mark.parametrize("wrap", ["module", "_orig_mod", "module._orig_mod", "_orig_mod.module"])
@pytest.mark.parametrize("container", ["pickle", "training pickle", "safetensors"])
def test_wrapper_prefixes_are_stripped_in_files(tmp_path: Path, wrap: str, container: str) -> None:
    sd, state = _wrapped_state(wrap)
    assert all(k.startswith(wrap + ".") for k in state)
    path = tmp_path / "m.ckpt"
    if container == "safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state} if container == "training pickle" else state, path)
    ck = open_checkpoint(path)
    assert _same(ck.keys(), ck.get, sd)
    assert all(ck.shape(k) == tuple(v.shape) and ck.dtype(k) == v.dtype for k, v in sd.items())
    prefixes = [f"prefix '{p}.'" for p in wrap.split(".")]
    assert (
        ck.unwrapped == (["key 'state_dict'"] if container == "training pickle" else []) + prefixes
    )


def test_a_prefix_only_some_names_have_is_kept() -> None:
    names = ["module.conv.weight", "head.weight"]
    assert strip_prefixes(names) == ("", [])
    assert strip_prefixes(["module.a", "module.b"]) == ("module.", ["prefix 'module.'"])
    assert strip_prefixes(["module."]) == ("", [])  # nothing would be left of the name


def test_live_wrapped_modules_are_opened_as_the_model_inside() -> None:
    model = _net()
    for wrapped, notes in [
        (torch.compile(model), ["wrapper OptimizedModule"]),
        (nn.DataParallel(model), ["wrapper DataParallel"]),
        (
            nn.DataParallel(torch.compile(model)),
            ["wrapper DataParallel", "wrapper OptimizedModule"],
        ),
    ]:
        inner, unwrapped = unwrap_module(wrapped)
        assert inner is model and unwrapped == notes
        ck = open_checkpoint(wrapped)
        assert _same(ck.keys(), ck.get, model.state_dict()) and ck.unwrapped == notes
        assert ck.path == "<Net>"


# --- pickles that weights_only loading refuses -------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_an_unsafe_pickle_lists_its_imports_and_advises_a_state_dict(
    tmp_path: Path, legacy: bool
) -> None:
    ckpt = {"state_dict": _net().state_dict(), "args": argparse.Namespace(lr=0.1)}  # as timm
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    expected = (
        f"{path}: refused: the pickle needs more than plain tensors (it imports "
        "argparse.Namespace), and rws never unpickles code; save the weights alone where the file "
        'was made, e.g. torch.save(ckpt["state_dict"], "weights.pt"), or as safetensors'
    )
    with pytest.raises(UnsafeInputError) as e:
        open_checkpoint(path)
    assert str(e.value) == expected and e.value.exit_code == 5
    code, out, err = run("inspect", path)
    assert code == 5 and out == ""
    assert err.strip().splitlines() == [f"error: {expected}"]
    assert "weights_only=False" not in err
