"""rws.runtime.device: device names, where a model lives, and move-and-restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rws.errors import UsageError
from rws.runtime.device import model_device, on_device, resolve_device

CUDA = torch.cuda.is_available()


class _Spy(nn.Linear):
    """A linear layer that records where ``.to`` sends it."""

    def __init__(self) -> None:
        super().__init__(2, 2)
        self.moves: list[torch.device | str] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moves.append(args[0])
        return super().to(*args, **kwargs)


class _BuffersOnly(nn.Module):
    def __init__(self, device: str) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(3, device=device))


# --- resolve_device -----------------------------------------------------------------------------


def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if CUDA else torch.device("cpu"))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_resolve_auto_follows_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:", "cuda:x", "cuda0", "", " cpu"])
def test_resolve_device_unknown_name(name: str) -> None:
    with pytest.raises(UsageError) as e:
        resolve_device(name)
    assert str(e.value) == f"unknown device {name!r}; choose cpu, cuda[:n] or auto"
    assert e.value.exit_code == 2


def test_resolve_device_not_a_string() -> None:
    with pytest.raises(UsageError) as e:
        resolve_device(0)  # type: ignore[arg-type]
    assert str(e.value) == "unknown device 0; choose cpu, cuda[:n] or auto"


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_cuda_without_cuda(name: str) -> None:
    with pytest.raises(UsageError) as e:
        resolve_device(name)
    assert str(e.value) == f"device {name!r}: no CUDA device is available; use cpu or auto"


# --- model_device -------------------------------------------------------------------------------


def test_model_device_parameters_buffers_and_none() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(_BuffersOnly("meta")) == torch.device("meta")  # no parameter: a buffer
    assert model_device(nn.ReLU()) == torch.device("cpu")  # neither: the CPU
    assert model_device(nn.Sequential()) == torch.device("cpu")


def test_model_device_prefers_the_first_parameter_over_buffers() -> None:
    model = nn.Sequential(_BuffersOnly("cpu"), nn.Linear(2, 2, device="meta"))
    assert model_device(model) == torch.device("meta")


# --- on_device ----------------------------------------------------------------------------------


def test_on_device_moves_there_and_back() -> None:
    model = _Spy()
    with on_device(model, "cpu") as dev:
        assert dev == torch.device("cpu") and model.moves == [torch.device("cpu")]
    assert model.moves == [torch.device("cpu"), torch.device("cpu")]
    with on_device(model, torch.device("cpu")) as dev:  # a device is used as it is
        assert dev == torch.device("cpu")
    assert len(model.moves) == 4


def test_on_device_moves_back_on_error() -> None:
    model = _Spy()
    with pytest.raises(RuntimeError, match="boom"), on_device(model, "cpu"):
        raise RuntimeError("boom")
    assert model.moves == [torch.device("cpu"), torch.device("cpu")]


def test_on_device_bad_name_does_not_move() -> None:
    model = _Spy()
    with pytest.raises(UsageError, match="unknown device 'gpu'"), on_device(model, "gpu"):
        pass  # pragma: no cover
    assert model.moves == []


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_on_device_cuda_round_trip() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with on_device(model, "cuda") as dev:
        assert dev.type == "cuda" and model_device(model) == dev
        assert all(t.is_cuda for t in (*model.parameters(), *model.buffers()))
    assert model_device(model) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="boom"), on_device(model, "cuda"):
        assert model_device(model).type == "cuda"
        raise RuntimeError("boom")
    assert all(not t.is_cuda for t in (*model.parameters(), *model.buffers()))
