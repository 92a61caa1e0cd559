"""timm:/torchvision: models (with stand-in packages), --normalize, --model-kw and the input-size check."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from rws.errors import CheckpointError, UsageError
from rws.io.safetensors_write import save_tensors
from rws.models import (
    check_input_size,
    load_model,
    model_spec,
    parse_model_kw,
    probe_normalization,
    resolve_model,
    split_spec,
)
from rws.models.normalization import NAMED_STATS, parse_normalize, self_normalising_keys


class _Net(nn.Module):
    def __init__(self, num_classes: int, image_size: int = 8) -> None:
        super().__init__()
        self.image_size = image_size
        self.head = nn.Linear(3 * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []
    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    tv_models.list_models = lambda: ["tiny_vit"]

    def get_model(name, weights=None, num_classes=1000, **kw):
        calls.append((name, weights, num_classes, kw))
        return _Net(num_classes, kw.get("image_size", 8))

    tv_models.get_model = get_model
    tv.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    return calls


def test_torchvision_model_takes_0_1_inputs_with_imagenet_stats(fake_torchvision) -> None:
    model = resolve_model("torchvision:tiny_vit", num_classes=4, img_size=6)
    assert fake_torchvision == [("tiny_vit", None, 4, {"image_size": 6})]
    assert list(model.state_dict()) == ["head.weight", "head.bias"]  # the package's own names
    x = torch.rand(2, 3, 6, 6)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NAMED_STATS["imagenet"])
    assert torch.allclose(model(x), model.head(((x - mean) / std).flatten(1)), atol=1e-6)
    with pytest.raises(UsageError, match="torchvision has no model 'nope'"):
        resolve_model("torchvision:nope")


def test_missing_torchvision_is_one_usage_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(UsageError, match=r"torchvision is not installed; install it"):
        resolve_model("torchvision:resnet18")


def test_timm_gets_img_size_and_model_kw(monkeypatch) -> None:
    seen = {}
    fake = types.ModuleType("timm")
    fake.is_model = lambda name: True

    def create_model(name, num_classes, **kw):
        seen.update(kw)
        return _Net(num_classes, kw["img_size"])

    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    kw = parse_model_kw(["drop_rate=0.1", "global_pool=avg", "depths=[1,2]"])
    model = resolve_model("timm:vit", num_classes=3, img_size=4, **kw)
    assert seen == {"img_size": 4, "drop_rate": 0.1, "global_pool": "avg", "depths": [1, 2]}
    assert model(torch.rand(1, 3, 4, 4)).shape == (1, 3)


def test_model_kw_the_factory_does_not_take_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unexpected keyword argument 'widht'"):
        resolve_model("resnet20", widht=2)
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_model_kw(["noequals"])


def test_normalize_none_and_explicit_stats_replace_the_built_in_layer() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    base = resolve_model("small-cnn", num_classes=10).eval()
    raw = resolve_model("small-cnn", num_classes=10, normalize="none").eval()
    raw.load_state_dict(base.state_dict())
    assert torch.equal(raw.normalize(x), x)
    # the same weights on already-normalised inputs give the built-in model's logits
    assert torch.allclose(raw(base.normalize(x)), base(x), atol=1e-6)
    half = resolve_model("small-cnn", num_classes=10, normalize="0.5,0.5,0.5/0.25,0.25,0.25")
    assert torch.allclose(half.normalize(x), (x - 0.5) / 0.25)
    assert parse_normalize("CIFAR100") == NAMED_STATS["cifar100"]
    for bad in ("imagenett", "0.5,0.5/0.2", "0.5,0.5,0.5/0,1,1", "nan,0,0/1,1,1"):
        with pytest.raises(UsageError, match="normalize"):
            parse_normalize(bad)


def test_probe_shows_double_normalisation_on_weights_trained_on_raw_inputs() -> None:
    """Weights trained without normalisation lose most of their accuracy when normalised twice."""
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1)
    x = nn.functional.interpolate(x, size=16)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    perm = torch.randperm(len(y))
    x, y = x[perm], y[perm]
    raw = resolve_model("small-cnn", num_classes=10, normalize="none")
    opt = torch.optim.Adam(raw.parameters(), lr=3e-3)
    for _ in range(4):
        for s in range(0, 1400, 100):
            opt.zero_grad()
            nn.functional.cross_entropy(raw(x[s : s + 100]), y[s : s + 100]).backward()
            opt.step()
    double = resolve_model("small-cnn", num_classes=10, normalize="0.1,0.1,0.1/0.05,0.05,0.05")
    double.load_state_dict(raw.state_dict())
    acc = probe_normalization(double, x[1400:], y[1400:])
    assert acc["none"] > 0.85
    assert acc["current"] < acc["none"] - 0.3
    assert isinstance(double.normalize, nn.Module) and double.training  # restored


def test_checkpoint_with_its_own_statistics_gets_a_hint(tmp_path) -> None:
    state = resolve_model("small-cnn", num_classes=10).state_dict()
    state["mu"] = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    assert self_normalising_keys(state) == ["mu", "sigma"]
    path = tmp_path / "robustbench.safetensors"
    save_tensors(path, state)
    with pytest.raises(CheckpointError, match=r"stores input statistics \(mu, sigma\)"):
        load_model("small-cnn", path, 10)


def test_input_size_mismatch_is_a_one_line_usage_error(tmp_path) -> None:
    fixed = _Net(10, image_size=8)
    check_input_size(fixed, (3, 8, 8))
    with pytest.raises(UsageError) as e:
        check_input_size(fixed, (3, 32, 32), what="model 'timm:vit'")
    msg = str(e.value)
    assert msg.startswith("model 'timm:vit' does not take 3×32×32 inputs (") and "\n" not in msg
    assert "--img-size" in msg
    path = tmp_path / "cnn.safetensors"
    save_tensors(path, resolve_model("small-cnn", num_classes=10).state_dict())
    model = load_model("small-cnn", path, 10, input_shape=(3, 16, 16))  # convolutional: any size
    assert not model.training


def test_options_travel_inside_the_spec() -> None:
    spec = model_spec("small-cnn", normalize="0.5,0.5,0.5/0.25,0.25,0.25", model_kw=["widht=8"])
    assert spec == "small-cnn,normalize=0.5;0.5;0.5/0.25;0.25;0.25,widht=8"
    assert split_spec("timm:vit,img_size=64,depths=[1,2]") == (
        "timm:vit",
        {"img_size": 64, "depths": [1, 2]},
    )
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(UsageError, match="must accept keyword arguments num_classes, widht"):
        resolve_model(spec)
    model = resolve_model("small-cnn,normalize=0.5;0.5;0.5/0.25;0.25;0.25")
    assert torch.allclose(model.normalize(x), (x - 0.5) / 0.25)
    assert resolve_model("small-cnn,num_classes=3", num_classes=10).fc.out_features == 3
    assert resolve_model("small-cnn,width=8").fc.in_features == 32
    with pytest.raises(UsageError, match="given both in the spec and apart"):
        resolve_model("small-cnn,width=2", width=3)
