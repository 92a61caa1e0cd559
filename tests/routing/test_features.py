"""The model-side routing features: the probe's subsample and the prototype projections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rws
from rws.data import load_digits
from rws.io.safetensors_read import TensorFile
from rws.models import create_model
from rws.robustness.corruptions import corrupt
from rws.routing import features as feat

LIBRARY = Path(rws.__file__).resolve().parent / "_signatures"


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    index = json.loads((LIBRARY / "index.json").read_text())
    model = create_model(index["model"]["arch"]).eval()
    clean = TensorFile(LIBRARY / "clean.safetensors")
    model.load_state_dict({k: clean.get(k) for k in clean})
    return model


def test_activation_probe_reads_the_first_64_images_and_keeps_the_signal(
    shipped: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = load_digits().test.x[:256]
    fog = corrupt(x, "fog", 3, generator=torch.Generator().manual_seed(0))
    sub = feat.activation_features(shipped, fog, 2)
    assert torch.equal(sub, feat.activation_features(shipped, fog[: feat.PROBE_IMAGES], 2))
    monkeypatch.setattr(feat, "PROBE_IMAGES", 256)
    whole = feat.activation_features(shipped, fog, 2)
    gap = (whole - feat.activation_features(shipped, x, 2)).abs().max()
    # measured: the subsample moves a feature by ≤ 0.055; fog moves them by up to 1.07
    assert float((sub - whole).abs().max()) < 0.1 < 0.5 < float(gap)


def test_prototype_features_are_the_unfolded_projections(shipped: torch.nn.Module) -> None:
    x = load_digits().test.x[:32]
    conv = shipped.conv1
    g = torch.Generator().manual_seed(1)
    protos = feat.prototypes([torch.randn(conv.weight.shape, generator=g) for _ in range(3)])
    got = feat.prototype_features(shipped, x, conv, protos)
    (a,) = feat._capture(shipped, x, [conv])  # conv1's input: the model normalises first
    cols = F.unfold(a, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    u = cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
    want = (u @ protos.T).abs().mean(0) / u.norm(dim=1).mean()
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=1e-5)
