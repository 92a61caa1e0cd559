"""The corruption API and registry (rws.robustness.corruptions): contract, seeding, severity,
statistics of the random kernels, usage errors. Kernels against references: test_corruption_kernels."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
import torch

import rws.robustness.corruptions as rc
from rws.errors import UnknownNameError, UsageError
from rws.robustness.corruptions import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corrupt,
    corruption_info,
    list_corruptions,
)
from rws.robustness.corruptions import spatter as spatter_mod
from rws.robustness.corruptions._textures import frost_texture, plasma_fractal
from rws.robustness.corruptions.registry import benchmark_order
from tests.robustness.conftest import gen

ALL = list(CORRUPTIONS + EXTRA_CORRUPTIONS)
RANDOM = [n for n in ALL if corruption_info(n)["random"]]


# --- registry and API ------------------------------------------------------------------------


def test_names_and_registry() -> None:
    assert len(CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    # derived from the registry's extra flags and families, in the published benchmark order
    assert CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
        "elastic_transform", "pixelate", "jpeg_compression",
    )  # fmt: skip
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert benchmark_order(extra=False) == CORRUPTIONS
    assert CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression"
    assert sorted(list_corruptions()) == sorted(ALL)
    assert list_corruptions("*_noise") == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
    ]
    assert {corruption_info(n)["family"] for n in ALL} == {"noise", "blur", "weather", "digital"}
    assert [n for n in ALL if corruption_info(n)["extra"]] == list(EXTRA_CORRUPTIONS)


def test_docstring_example_runs() -> None:
    result = doctest.testmod(rc, extraglobs={"torch": torch}, verbose=False)
    assert result.attempted >= 1 and result.failed == 0


# --- contract: shape, dtype, device, range, determinism --------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_contract(name: str, photos32: torch.Tensor) -> None:
    x = photos32[:4]
    before = x.clone()
    y = corrupt(x, name, 3, generator=gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous() and y.data_ptr() != x.data_ptr()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert float((y - x).abs().mean()) > 1e-3  # the corruption is there
    y64 = corrupt(x.double(), name, 3, params="imagenet", generator=gen(1))
    assert y64.dtype == torch.float64 and y64.shape == x.shape
    assert torch.equal(x, before)  # input left alone
    assert corrupt(x[:0], name, 1).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name", ALL)
def test_seeded_and_batched(name: str, photos32: torch.Tensor) -> None:
    x = photos32[:3]
    a = corrupt(x, name, 4, generator=gen(7))
    assert torch.equal(a, corrupt(x, name, 4, generator=gen(7)))
    b = corrupt(x, name, 4, generator=gen(8))
    if name in RANDOM:
        assert not torch.equal(a, b)
        # each image gets its own draws: two copies of one image come out different
        twin = corrupt(x[:1].expand(2, -1, -1, -1), name, 4, generator=gen(7))
        assert not torch.equal(twin[0], twin[1])
    else:
        assert torch.equal(a, b)


def test_global_rng_untouched(photos32: torch.Tensor) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    for name in RANDOM:
        corrupt(photos32[:2], name, 2)  # no generator: a fresh private one
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


# --- severity: the corruption grows with the table -------------------------------------------


def _mse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x - y) ** 2).mean())


def _one_minus_corr(x: torch.Tensor, y: torch.Tensor) -> float:
    # frost blends a·x + b·texture: with a fixed texture, 1 − corr(x, y) grows as a/b falls, which
    # the tables do monotonically, while the MSE need not (CIFAR severity 4 lowers a, keeps b)
    xs, ys = x.reshape(len(x), -1), y.reshape(len(y), -1)
    xs, ys = xs - xs.mean(1, keepdim=True), ys - ys.mean(1, keepdim=True)
    return float((1 - (xs * ys).sum(1) / (xs.norm(dim=1) * ys.norm(dim=1))).mean())


# Severity steps (from → from+1) that the published tables themselves do not make stronger:
NOT_MONOTONE = {
    # CIFAR glass (σ, δ, passes): (.05,1,1) (.25,1,1) (.4,1,1) (.25,1,2) (.4,1,2): the first blur
    # hides the shuffle's change, so steps 1→2, 2→3 and 4→5 smooth rather than add distortion
    ("glass_blur", 32): {1, 2, 4},
    # ImageNet glass: (.7,1,2) (.9,2,1) (1,2,3) (1.1,3,2): one pass fewer at 2 and 4
    ("glass_blur", 96): {1, 3},
    # CIFAR motion (radius, σ) (6,2) → (8,2): taps past ~3σ weigh nothing, ImageMagick's too
    ("motion_blur", 32): {3},
    # the elastic tables shrink the affine jitter as the elastic field grows (CIFAR 2.56 → 0.96 px;
    # ImageNet 24.4 → 4.9 px at 3): the global warp dominates any pixel distance
    ("elastic_transform", 32): {1, 2, 3, 4},
    ("elastic_transform", 96): {2},
    # saturate: ×0.3, ×0.1 (desaturate) then ×1.5/×2 (oversaturate): step 2→3 changes direction
    ("saturate", 32): {2},
    ("saturate", 96): {2},
    # CIFAR spatter severities 1–3 are water, 4–5 mud: different kinds
    ("spatter", 32): {3},
}


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", ALL)
def test_distance_grows_with_severity(
    name: str, size: int, photos32: torch.Tensor, photos96: torch.Tensor
) -> None:
    x = photos32 if size == 32 else photos96  # params="auto": CIFAR table at 32, ImageNet at 96
    measure = _one_minus_corr if name == "frost" else _mse
    d = [measure(x, corrupt(x, name, s, generator=gen(0))) for s in range(1, 6)]
    assert min(d) > 1e-4, d
    allowed = NOT_MONOTONE.get((name, size), set())
    for s in range(1, 5):
        if s in allowed:
            continue
        assert d[s] > d[s - 1], f"{name} @ {size}px: severity {s + 1} not stronger than {s}: {d}"
    assert d[4] != d[0]


# --- random kernels: their statistics follow the table ---------------------------------------


def test_noise_statistics() -> None:
    x = torch.full((4, 3, 64, 64), 0.5)
    noise = corrupt(x, "gaussian_noise", 3, generator=gen()) - x
    assert abs(float(noise.std()) - 0.08) < 0.003
    hit = corrupt(x, "impulse_noise", 5, generator=gen())
    assert abs(float((hit != x).float().mean()) - 0.07) < 0.005
    assert abs(float((hit == 1).float().mean()) - 0.035) < 0.003  # salt and pepper, half each
    assert abs(float((hit == 0).float().mean()) - 0.035) < 0.003
    shot = corrupt(x, "shot_noise", 1, generator=gen())  # Poisson(0.5·500)/500: var 0.5/500
    assert abs(float(shot.mean()) - 0.5) < 0.002
    assert abs(float(shot.var()) - 0.001) < 0.0001
    speck = corrupt(x, "speckle_noise", 5, generator=gen()) - x  # x·N(0, 0.2²)
    assert abs(float(speck.std()) - 0.1) < 0.004


def test_textures() -> None:
    p = plasma_fractal(3, 32, 2.0, gen(), torch.zeros(1))
    assert p.shape == (3, 32, 32)
    assert torch.allclose(p.amin((1, 2)), torch.zeros(3)) and torch.allclose(
        p.amax((1, 2)), torch.ones(3)
    )
    assert not torch.equal(p[0], p[1])
    f = frost_texture(8, 32, 48, gen(), torch.zeros(1))
    assert f.shape == (8, 3, 32, 48) and float(f.min()) >= 0 and float(f.max()) <= 1
    means = f.mean((1, 2, 3))
    assert float(means.min()) > 0.3 and float(means.max()) < 0.85  # the photos' span, 0.35–0.8
    assert bool((f[:, 2].mean((1, 2)) >= f[:, 0].mean((1, 2))).all())  # cold: blue ≥ red


def test_spatter_helpers_match_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    for trial in range(20):
        layer = gaussian(rng.normal(0.65, 0.3, (32, 32)), sigma=1 + trial % 4)
        layer[layer < 0.68] = 0
        u8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
        edges_cv = cv2.Canny(u8, 50, 150)
        t = torch.from_numpy(u8.astype(np.float32))[None, None]
        edges = spatter_mod.canny(t, 50.0, 150.0)[0, 0].numpy()
        np.testing.assert_array_equal(edges, edges_cv > 0)
        dist_cv = np.minimum(cv2.distanceTransform(255 - edges_cv, cv2.DIST_L2, 5), 20)
        dist = spatter_mod.chamfer_distance(torch.from_numpy(edges)[None, None], 20.0)[0, 0]
        np.testing.assert_allclose(dist.numpy(), dist_cv, atol=1e-3)
        b = cv2.blur(dist_cv, (3, 3)).astype(np.uint8)
        eq = spatter_mod.equalize_hist(torch.from_numpy(b.astype(np.float32))[None, None])
        np.testing.assert_array_equal(eq[0, 0].numpy(), cv2.equalizeHist(b))


# --- usage errors ----------------------------------------------------------------------------


def test_usage_errors(photos32: torch.Tensor) -> None:
    x = photos32[:2]
    with pytest.raises(UnknownNameError, match="unknown corruption 'rain'; choose one of: "):
        corrupt(x, "rain", 1)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(
            UsageError, match=re.escape(f"severity must be an integer from 1 to 5, got {bad!r}")
        ):
            corrupt(x, "fog", bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"shape \(N, 3, H, W\), got \(3, 32, 32\)"):
        corrupt(x[0], "fog", 1)
    with pytest.raises(UsageError, match=r"got \(2, 1, 32, 32\)"):
        corrupt(x[:, :1], "fog", 1)
    with pytest.raises(UsageError, match=r"float tensor in \[0, 1\], got dtype torch\.uint8"):
        corrupt((x * 255).to(torch.uint8), "fog", 1)
    with pytest.raises(UsageError, match=r"got values in \[0, 255\]; divide 0–255 images by 255"):
        corrupt(x * 255, "fog", 1)
    with pytest.raises(UsageError, match="images contain NaN or Inf values"):
        corrupt(torch.full_like(x, float("nan")), "fog", 1)
    with pytest.raises(UsageError, match="at least 8×8 pixels, got 4×4"):
        corrupt(x[..., :4, :4], "fog", 1)
    with pytest.raises(UsageError, match=r"params must be 'cifar', .* or 'auto', not 'x'"):
        corrupt(x, "fog", 1, params="x")  # type: ignore[arg-type]
    assert corrupt(x * 1.01, "contrast", 1).max() <= 1.0  # slightly out of range: clamped
