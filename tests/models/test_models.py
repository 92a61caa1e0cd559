"""The model zoo: shapes, parameter counts, reference module names and the spec resolver."""

from __future__ import annotations

import doctest
import sys
import textwrap
import types

import pytest
import torch
from torch import nn

import rws.models.registry
from rws.errors import UnknownNameError, UsageError
from rws.models import MODELS, create_model, get_model, list_models, resolve_model
from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.resnet import PadShortcut, cifar_resnet
from rws.models.wrn import WideResNet

# Published sizes: He et al. 2016 Table 6 (CIFAR ResNets), Zagoruyko & Komodakis 2016 (WRNs),
# and the CIFAR-stem ResNet / PreAct ResNet figures of the kuangliu / RiFT code; VGG-16: convs only.
PUBLISHED_PARAMS = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet18": 11.17e6,
    "resnet34": 21.28e6,
    "resnet50": 23.52e6,
    "preact-resnet18": 11.17e6,
    "wrn-16-4": 2.7e6,
    "wrn-28-10": 36.5e6,
    "wrn-34-10": 46.2e6,
}
PUBLISHED_CONV_PARAMS = {"vgg16": 14.7e6, "vgg16-bn": 14.7e6}


def _num_params(model: nn.Module, kind: type[nn.Module] | None = None) -> int:
    if kind is None:
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters())


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_normalize_first(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert torch.allclose(first.mean.flatten(), torch.tensor(CIFAR_MEAN))
    assert torch.allclose(first.std.flatten(), torch.tensor(CIFAR_STD))
    assert not any(k.startswith("normalize.") for k in model.state_dict())  # not a weight
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published(name: str) -> None:
    count = _num_params(create_model(name))
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONV_PARAMS))
def test_vgg_conv_parameter_count(name: str) -> None:
    model = create_model(name)
    assert _num_params(model, nn.Conv2d) == pytest.approx(PUBLISHED_CONV_PARAMS[name], rel=0.02)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_every_published_entry_is_registered() -> None:
    assert set(PUBLISHED_PARAMS) | set(PUBLISHED_CONV_PARAMS) <= set(list_models())


def test_get_model_returns_the_registered_constructor() -> None:
    from rws.models.small_cnn import small_cnn

    assert get_model("small-cnn") is small_cnn is MODELS.entry("small-cnn").obj
    assert all(callable(get_model(n)) for n in list_models())
    with pytest.raises(UnknownNameError, match="unknown model 'nope'; choose one of: ") as e:
        get_model("nope")
    assert e.value.choices == sorted(list_models())


def test_list_models_filters_by_glob_in_registration_order() -> None:
    assert list_models("resnet*") == [
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
        "resnet50",
    ]  # fmt: skip
    assert list_models("wrn-*-10") == ["wrn-28-10", "wrn-34-10"]
    assert list_models("nothing*") == []
    assert list_models() == list_models("*")


def test_registering_a_name_twice_raises() -> None:
    with pytest.raises(ValueError, match="model 'small-cnn' is already registered"):
        MODELS.add("small-cnn", lambda num_classes=10: nn.Identity())


def test_registry_docstring_examples_run() -> None:
    result = doctest.testmod(rws.models.registry)
    assert result.attempted >= 3 and result.failed == 0


def test_resnet18_names_follow_rift() -> None:
    keys = create_model("resnet18").state_dict().keys()
    for name in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.1.conv2.weight",  # RiFT's non-robust-critical module on CIFAR-10/100
        "layer3.1.conv2.weight",  # … on Tiny-ImageNet
        "layer4.1.conv1.weight",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean",
        "linear.weight",
        "linear.bias",
    ):
        assert name in keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity where nothing changes


def test_resnet34_and_50_names_follow_rift() -> None:
    keys34 = create_model("resnet34").state_dict().keys()
    assert {"layer2.3.conv2.weight", "layer3.5.conv2.weight"} <= keys34
    keys50 = create_model("resnet50").state_dict().keys()
    assert {"layer1.0.conv3.weight", "layer1.0.shortcut.0.weight", "linear.weight"} <= keys50
    assert create_model("resnet50").linear.in_features == 2048


def test_preact_resnet18_names_follow_rift() -> None:
    keys = create_model("preact-resnet18").state_dict().keys()
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer2.1.conv2.weight"} <= keys
    assert {"layer2.0.shortcut.0.weight", "linear.weight"} <= keys
    assert not any(k.startswith(("bn1.", "bn.")) for k in keys)
    with_bn = create_model("preact-resnet18", final_bn=True).state_dict().keys()
    assert "bn.weight" in with_bn


def test_wrn_names_follow_trades_and_rift() -> None:
    keys = create_model("wrn-34-10").state_dict().keys()
    for name in (
        "conv1.weight",
        "block1.layer.3.conv2.weight",  # RiFT's pick for WRN-34-10 on CIFAR-10
        "block1.layer.2.conv2.weight",  # … on CIFAR-100
        "block1.layer.0.convShortcut.weight",
        "block3.layer.4.bn2.running_mean",
        "bn1.weight",
        "fc.weight",
    ):
        assert name in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert not any(k.startswith("sub_block1") for k in keys)


def test_vgg16_names_follow_rws_reference() -> None:
    keys = list(create_model("vgg16").state_dict())
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = [f"features.{i}.{p}" for i in conv_idx for p in ("weight", "bias")]
    assert keys == [*expected, "classifier.weight", "classifier.bias"]
    bn_keys = create_model("vgg16-bn").state_dict().keys()
    assert {"features.0.weight", "features.1.running_var", "features.3.weight"} <= bn_keys


def test_cifar_resnet_option_a_has_no_shortcut_parameters() -> None:
    model = create_model("resnet20")
    assert not any("shortcut" in k for k in model.state_dict())
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19  # + 1 Linear = 20 layers
    option_b = create_model("resnet20", shortcut="B")
    assert "layer2.0.shortcut.0.weight" in option_b.state_dict()
    assert _num_params(option_b) > _num_params(model)


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    out = PadShortcut(4, 8, 2)(x)
    assert out.shape == (2, 8, 2, 2)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert not out[:, :2].any() and not out[:, 6:].any()


def test_bad_depths_and_options_raise_usage_errors() -> None:
    with pytest.raises(UsageError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(UsageError, match="6n\\+4"):
        WideResNet(depth=33)
    with pytest.raises(UsageError, match="shortcut must be 'A' or 'B'"):
        create_model("resnet20", shortcut="C")


def test_custom_mean_std_and_model_is_trainable() -> None:
    model = create_model("resnet20", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(model.normalize.mean.flatten(), torch.full((3,), 0.5))
    loss = nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_resolve_registry_name() -> None:
    model = resolve_model("resnet20", num_classes=5)
    assert model.linear.out_features == 5


def test_resolve_unknown_arch_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'resnet-9000'; choose one of: ") as e:
        resolve_model("resnet-9000")
    assert "resnet18" in e.value.choices and "wrn-34-10" in e.value.choices
    assert e.value.exit_code == 2


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "my_zoo_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(num_classes=10, width=4):
                return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

            def no_classes():
                return nn.Identity()

            def not_a_module(num_classes=10):
                return "model"

            class Zoo:
                @staticmethod
                def make(num_classes=10):
                    return nn.Linear(2, num_classes)

            CONSTANT = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_zoo_models"
    sys.modules.pop("my_zoo_models", None)


def test_resolve_module_factory(user_module: str) -> None:
    model = resolve_model(f"{user_module}:tiny", num_classes=4)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert resolve_model(f"{user_module}:Zoo.make", num_classes=6).out_features == 6
    assert resolve_model(f"{user_module}:tiny", num_classes=4, width=8)[1].out_features == 4
    assert resolve_model("rws.models.resnet:resnet18", num_classes=3).linear.out_features == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:CONSTANT", "'CONSTANT' is not callable"),
        ("{mod}:no_classes", "must accept keyword arguments num_classes"),
        ("{mod}:not_a_module", "returned str, not a torch.nn.Module"),
        ("path/to/file.py:build", "expected a registered name, 'package.module:factory'"),
        ("{mod}:", "expected a registered name"),
    ],
)
def test_resolve_module_factory_errors(user_module: str, spec: str, message: str) -> None:
    spec = spec.format(mod=user_module)
    with pytest.raises(UsageError, match=message) as e:
        resolve_model(spec)
    assert str(e.value).startswith(f"model {spec!r}: ")


def test_resolve_timm_without_timm(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(UsageError, match="timm is not installed; install it"):
        resolve_model("timm:resnet18")


def test_resolve_timm_wraps_normalisation(monkeypatch) -> None:
    """With a stand-in timm module: names kept, [0, 1] inputs normalised with the config's stats."""

    class Net(nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.head = nn.Linear(3, num_classes)
            self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.mean(dim=(2, 3)))

    fake = types.ModuleType("timm")
    fake.is_model = lambda name: name == "tiny_net"
    fake.create_model = lambda name, num_classes, **kw: Net(num_classes)
    monkeypatch.setitem(sys.modules, "timm", fake)

    model = resolve_model("timm:tiny_net", num_classes=3)
    assert list(model.state_dict()) == ["head.weight", "head.bias"]
    x = torch.rand(2, 3, 8, 8)
    expected = model.head(((x - 0.5) / 0.2).mean(dim=(2, 3)))
    assert torch.allclose(model(x), expected)
    with pytest.raises(UsageError, match="timm has no model 'nope'"):
        resolve_model("timm:nope")
