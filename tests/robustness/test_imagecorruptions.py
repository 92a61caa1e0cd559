"""``params="imagecorruptions"``: the severity table of the ``imagecorruptions`` package (bethgelab,
1.1.2), which COCO-C and most detection/segmentation robustness sets were made with.

The first tests always run (the table, its kernel variants, hand-computed expectations). The rest
compare every corruption × severity with the package itself on two real 224×224 photos and skip
when it is not installed; the compatibility shims it needs on current numpy, scikit-image and
setuptools live here, not in rws. Differences are in 0–255 units.
"""

from __future__ import annotations

import doctest
import importlib.util
import math
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rws.errors import UsageError
from rws.robustness.corruptions import (
    _rng,
    corrupt,
    corruption_info,
    kernel_fidelity,
    list_corruptions,
    resolve_table,
    table_kernel,
    table_label,
)
from rws.robustness.corruptions import params as P
from rws.robustness.corruptions import registry as R
from rws.robustness.corruptions._resample import pil_box_matrix, pil_nearest_matrix, zoom_crop
from rws.robustness.corruptions.registry import VARIANTS, get_corruption, register_variant

SEVERITIES = (1, 2, 3, 4, 5)


def _photos(n: int = 2, size: int = 224) -> np.ndarray:
    """scikit-learn's two sample photos (china, flower), centre-cropped square and resized to
    ``size``², as uint8 ``(n, size, size, 3)``."""
    from sklearn.datasets import load_sample_images

    out = []
    for a in load_sample_images().images[:n]:
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def _tensor(u8: np.ndarray) -> torch.Tensor:
    """uint8 ``(…, H, W, 3)`` → float ``(N, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(u8.reshape(-1, *u8.shape[-3:]).copy()).permute(0, 3, 1, 2) / 255.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return _photos()


# --- the table and its variants (always run) ----------------------------------------------------


def test_resolve_table_and_labels() -> None:
    assert resolve_table("imagecorruptions", 32, 32) == "imagecorruptions"
    assert resolve_table("auto", 32, 32) == "cifar"
    assert resolve_table("auto", 224, 224) == "imagenet"
    assert table_label("imagecorruptions") == "imagecorruptions (imagecorruptions 1.1.2)"
    assert table_label("imagenet") == "imagenet (make_imagenet_c.py)"
    assert table_label("cifar") == "cifar (make_cifar_c.py)"
    with pytest.raises(UsageError, match="'imagecorruptions' or 'auto', not 'coco'"):
        resolve_table("coco", 224, 224)


def test_table_is_imagenet_but_for_elastic() -> None:
    differs = {k for k in P.IMAGENET if P.IMAGECORRUPTIONS[k] != P.IMAGENET[k]}
    assert differs == {"elastic_transform"} and set(P.IMAGECORRUPTIONS) == set(P.IMAGENET)
    rows = P.IMAGECORRUPTIONS["elastic_transform"]
    assert [r[0] for r in rows] == pytest.approx([12.5, 16.25, 21.25, 25.0, 30.0])  # monotone α
    assert {r[1:] for r in rows} == {(0.01, 0.005)}  # σ and amplitude relative to the image


def test_variants_and_fidelity_per_table() -> None:
    ic = {name for table, name in VARIANTS if table == "imagecorruptions"}
    assert ic == {"elastic_transform", "pixelate", "snow", "motion_blur"}
    for name in list_corruptions():
        kernel = table_kernel(name, "imagecorruptions")
        assert (kernel is not get_corruption(name)) == (name in ic - {"motion_blur"})
        assert table_kernel(name, "imagenet") is get_corruption(name)
    # that package blurs with rws's own line kernel: approximate for hendrycks, exact for it
    assert kernel_fidelity("motion_blur") == kernel_fidelity("snow") == "approximate"
    assert kernel_fidelity("motion_blur", "imagecorruptions") == "reference"
    assert kernel_fidelity("snow", "imagecorruptions") == "reference"
    assert kernel_fidelity("frost", "imagecorruptions") == "approximate"  # no frost photographs
    assert kernel_fidelity("motion_blur", "imagenet") == "approximate"


def test_doctests_and_duplicate_variants() -> None:
    for module in (P, R):
        result = doctest.testmod(module, verbose=False)
        assert result.attempted and not result.failed, module.__name__
    with pytest.raises(ValueError, match="'pixelate' already has a variant for table"):
        register_variant("pixelate", table="imagecorruptions")(lambda x, c, *, generator: x)


def test_pixelate_nearest_by_hand() -> None:
    x = torch.rand(2, 3, 8, 8, generator=_gen(0))
    # 8 → 4 (BOX: 2×2 means) → 8 (NEAREST: o takes ⌊(o + ½)/2⌋ = o // 2)
    hand = F.avg_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    out = table_kernel("pixelate", "imagecorruptions")(x, 0.5, generator=_gen(0))
    torch.testing.assert_close(out, hand, rtol=0, atol=1e-6)
    # 9 → 6 → 9: output 4 sits on a tie, (4 + ½)·6/9 = 3; Pillow's NEAREST sums 1/3 + 4·2/3 in
    # float64 (2.999…) and takes pixel 2, where BOX takes 3
    assert pil_nearest_matrix(6, 9).argmax(1).tolist() == [0, 1, 1, 2, 2, 3, 4, 5, 5]
    assert pil_box_matrix(6, 9).argmax(1).tolist() == [0, 1, 1, 2, 3, 3, 4, 5, 5]
    x = torch.rand(1, 3, 9, 9, generator=_gen(1))
    nearest = table_kernel("pixelate", "imagecorruptions")(x, 0.7, generator=_gen(0))
    box = get_corruption("pixelate")(x, 0.7, generator=_gen(0))
    assert torch.equal(nearest[..., 4, :], nearest[..., 3, :])
    assert torch.equal(box[..., 4, :], box[..., 5, :]) and not torch.equal(nearest, box)
    # at 224 px no severity has a tie: there the package's pixelate is hendrycks's
    for c in P.IMAGECORRUPTIONS["pixelate"]:
        sh = int(224 * c)
        np.testing.assert_array_equal(pil_nearest_matrix(sh, 224), pil_box_matrix(sh, 224))


def _pillow_pixelate(x: torch.Tensor, c: float) -> torch.Tensor:
    """Pillow's BOX down to ``int(side·c)`` and NEAREST back, per float32 plane (mode ``F``)."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for idx in np.ndindex(*x.shape[:2]):
        im = Image.fromarray(x[idx].numpy().astype(np.float32), mode="F")
        im = im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.NEAREST)
        out[idx] = torch.from_numpy(np.array(im))
    return out


@pytest.mark.parametrize("size", [9, 11, 15, 20, 224, 299])
def test_pixelate_variant_is_pillows_box_then_nearest(size: int) -> None:
    x = torch.rand(1, 3, size, size + 3, generator=_gen(size))
    for c in P.IMAGECORRUPTIONS["pixelate"]:
        out = table_kernel("pixelate", "imagecorruptions")(x, c, generator=_gen(0))
        torch.testing.assert_close(out, _pillow_pixelate(x, c), rtol=0, atol=2e-6)


def test_zoom_blur_needs_no_variant() -> None:
    # the package trims each zoom from its top-left corner, hendrycks from its centre; the zoom
    # of the central ceil(n/z) pixels is round(ceil(n/z)·z) < n + z + ½ long, so for z ≤ 1.5
    # (every zoom_blur factor) both trims start at row 0
    factors = {z for t in (P.CIFAR, P.IMAGENET) for row in t["zoom_blur"] for z in row}
    assert max(factors) < 1.5
    for n in range(8, 1025):
        for z in factors:
            assert (round(math.ceil(n / z) * z) - n) // 2 == 0


def test_zoom_crop_is_scipy_zoom_of_the_central_crop() -> None:
    from scipy.ndimage import zoom

    x = torch.rand(1, 1, 20, 13, dtype=torch.float64, generator=_gen(1))
    for z in (2.0, 2.5, 4.5):  # snow's zooms: round(crop·z) exceeds the side by up to 3
        ch, cw = math.ceil(20 / z), math.ceil(13 / z)
        top, left = (20 - ch) // 2, (13 - cw) // 2
        ref = zoom(x[0, 0, top : top + ch, left : left + cw].numpy(), z, order=1)
        out = zoom_crop(x, z)[0, 0].numpy()
        assert out.shape == ref.shape and out.shape[0] >= 20 and out.shape[1] >= 13
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_elastic_is_monotone_and_milder_than_hendrycks(photos: np.ndarray) -> None:
    x = _tensor(photos).repeat(8, 1, 1, 1)  # 16 draws: hendrycks's affine step varies a lot
    ic, hendrycks = [], []
    for s in SEVERITIES:
        for params, out in (("imagecorruptions", ic), ("imagenet", hendrycks)):
            y = corrupt(x, "elastic_transform", s, params=params, generator=_gen(s))
            out.append(float((y - x).abs().mean()) * 255)
    assert ic == sorted(ic) and hendrycks[2] < hendrycks[1]  # hendrycks: sharp drop after 2
    # hendrycks / package at severities 1, 2: measured 3.5× and 4.5× on these photos
    assert min(h / i for h, i in zip(hendrycks[:2], ic[:2], strict=True)) > 2.5
    # without the affine step, α = 0 is the identity (bilinear sampling at the pixel centres, up to
    # float32 rounding of the normalised grid)
    still = table_kernel("elastic_transform", "imagecorruptions")(x, (0.0, 0.01, 0.005),
                                                                 generator=_gen(0))  # fmt: skip
    torch.testing.assert_close(still, x, rtol=0, atol=5e-5)


def test_variants_are_seeded_batched_and_non_square() -> None:
    x = torch.rand(3, 3, 40, 56, generator=_gen(2))
    for name in ("elastic_transform", "snow", "pixelate"):
        a = corrupt(x, name, 3, params="imagecorruptions", generator=_gen(5))
        b = corrupt(x, name, 3, params="imagecorruptions", generator=_gen(5))
        assert a.shape == x.shape and torch.equal(a, b)
        if corruption_info(name)["random"]:
            c = corrupt(x, name, 3, params="imagecorruptions", generator=_gen(6))
            assert not torch.equal(a, c)
    snow_ic = corrupt(x, "snow", 2, params="imagecorruptions", generator=_gen(5))
    snow_h = corrupt(x, "snow", 2, params="imagenet", generator=_gen(5))
    assert 0 < float((snow_ic - snow_h).abs().mean()) * 255 < 2  # unquantised layer, own trim


def test_reports_name_the_table_that_ran(tmp_path: Path) -> None:
    import rws
    from rws.data import load_digits
    from rws.hub.card import model_card
    from rws.models import create_model
    from rws.robustness.report import Report

    torch.manual_seed(0)
    model = create_model("small-cnn").eval()
    test = load_digits().test
    data = (test.x[:16], test.y[:16])
    patch = rws.extract(model.state_dict(), {k: v + 0.01 if v.is_floating_point() else v
                                             for k, v in model.state_dict().items()}, name="p")  # fmt: skip
    auto = rws.evaluate(model, data, corruptions=["motion_blur"], severities=[1], device="cpu")
    assert auto.settings["params"] == "auto" and auto.settings["table"] == "cifar (make_cifar_c.py)"
    assert auto.settings["kernels"] == {"motion_blur": "approximate"}
    rep = rws.evaluate(model, data, corruptions=["motion_blur"], severities=[1], patches=[patch],
                       params="imagecorruptions", device="cpu")  # fmt: skip
    label = "imagecorruptions (imagecorruptions 1.1.2)"
    assert rep.settings["table"] == label and rep.config.params == "imagecorruptions"
    assert rep.settings["kernels"] == {"motion_blur": "reference"}  # that package's own kernel
    rows = {(r["variant"], r["metric"]): r for r in rep.rows()}
    assert rows[("p", "corruption/motion_blur/1")]["table"] == label
    assert rows[("p", "clean")]["table"] is None
    rep.save_csv(tmp_path / "r.csv")
    assert f",reference,{label}" in (tmp_path / "r.csv").read_text()
    assert f"corruption table {label}" in str(rep.table().title)
    assert f"corruption table {label}" in model_card(
        [("p.safetensors", patch)], "org/p", report=rep
    )
    # a report from before the field still loads and renders, without a table
    old = rep.to_dict()
    del old["settings"]["table"]
    old_rep = Report.from_dict(old)
    assert all(r["table"] is None for r in old_rep.rows())
    assert "corruption table" not in str(old_rep.table().title)
    assert "corruption table" not in model_card([("p.safetensors", patch)], "org/p", report=old_rep)


# --- against the package (skipped without it) --------------------------------------------------


def _gaussian_compat(
    image: Any, sigma: Any = 1, *args: Any, multichannel: Any = None, **kw: Any
) -> np.ndarray:
    """``skimage.filters.gaussian`` with the ``multichannel`` keyword removed in 0.19+."""
    from skimage.filters import gaussian

    if multichannel:
        kw["channel_axis"] = -1
    return gaussian(image, sigma, *args, **kw)


@pytest.fixture(scope="module")
def package() -> Iterator[Any]:
    """The ``imagecorruptions`` module, importable and runnable on current libraries."""
    if importlib.util.find_spec("imagecorruptions") is None:
        pytest.skip("the imagecorruptions package is not installed")
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("pkg_resources") is None:  # gone from setuptools ≥ 81
            shim = types.ModuleType("pkg_resources")
            here = lambda name: os.path.dirname(importlib.util.find_spec(name).origin)  # noqa: E731
            shim.resource_filename = lambda name, path: os.path.join(here(name), path)  # type: ignore[attr-defined]
            mp.setitem(sys.modules, "pkg_resources", shim)
        if importlib.util.find_spec("scipy.ndimage.interpolation") is None:  # a removed alias
            import scipy.ndimage

            mp.setitem(sys.modules, "scipy.ndimage.interpolation", scipy.ndimage)
        mp.setattr(np, "float_", np.float64, raising=False)  # removed in numpy 2
        ic = pytest.importorskip("imagecorruptions")
        mp.setattr(sys.modules["imagecorruptions.corruptions"], "gaussian", _gaussian_compat)
        yield ic


def _package_out(package: Any, name: str, u8: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """The package's corruption function itself (float, before ``corrupt``'s uint8 floor)."""
    np.random.seed(seed)
    return np.asarray(package.corruption_dict[name](Image.fromarray(u8), severity), np.float64)


def _rws_out(name: str, x: torch.Tensor, severity: int, seed: int) -> np.ndarray:
    y = corrupt(x, name, severity, params="imagecorruptions", generator=_gen(seed))
    return y.permute(0, 2, 3, 1).double().numpy() * 255.0


DETERMINISTIC = [c for c in list_corruptions() if not corruption_info(c)["random"]]
# pixelate: the package resizes uint8 images, so its BOX means are rounded (Pillow's fixed point:
# up to one level) where rws keeps them in float; the others agree to float rounding (jpeg: the
# same decoded bytes)
PIXEL_TOL = {"pixelate": 1.0 + 1e-3}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_package_per_pixel(
    package: Any, photos: np.ndarray, name: str
) -> None:
    for s in SEVERITIES:
        ours = _rws_out(name, _tensor(photos), s, 0)
        diff = np.stack([np.abs(ours[i] - _package_out(package, name, u8, s, 0))
                         for i, u8 in enumerate(photos)])  # fmt: skip
        assert diff.max() <= PIXEL_TOL.get(name, 1e-3), (name, s, diff.max())
        assert diff.mean() <= PIXEL_TOL.get(name, 1e-3) / 2, (name, s, diff.mean())


class _Replay:
    """Records the draws an rws kernel makes and replays them as the package's numpy draws,
    checking that the package asks for the same distribution (bounds, location, size)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.mp = mp
        self.queue: list[tuple[str, float, float, Any]] = []  # (kind, low/loc, high/scale, value)

    def record(self) -> None:
        for kind in ("uniform", "normal"):
            original = getattr(_rng, kind)

            def spy(
                shape: tuple[int, ...],
                g: torch.Generator,
                like: torch.Tensor,
                a: float = 0.0,
                b: float = 1.0,
                *,
                _f: Callable[..., torch.Tensor] = original,
                _k: str = kind,
            ) -> torch.Tensor:
                t = _f(shape, g, like, a, b)
                for v in t[0].reshape(-1, *t.shape[-2:]) if t.dim() > 1 else t[:1]:
                    self.queue.append((_k, a, b, v.double().numpy() if t.dim() > 1 else float(v)))
                return t

            self.mp.setattr(_rng, kind, spy)

    def replay(self) -> None:
        def draw(kind: str) -> Callable[..., Any]:
            def f(a: float = 0.0, b: float = 1.0, size: Any = None, **kw: Any) -> Any:
                a, b = kw.get("loc", a), kw.get("scale", b)
                k, lo, hi, v = self.queue.pop(0)
                assert (k, lo, hi) == (kind, pytest.approx(a), pytest.approx(b))
                assert np.shape(v) == (() if size is None else tuple(size))
                return v

            return f

        self.mp.undo()
        self.mp.setattr(np.random, "uniform", draw("uniform"))
        self.mp.setattr(np.random, "normal", draw("normal"))


@pytest.mark.parametrize("name", ["elastic_transform", "motion_blur", "snow"])
def test_same_draws_give_the_packages_pixels(package: Any, photos: np.ndarray, name: str) -> None:
    u8 = photos[1]
    for s in SEVERITIES:
        with pytest.MonkeyPatch.context() as mp:
            replay = _Replay(mp)
            replay.record()
            ours = _rws_out(name, _tensor(u8), s, s)[0]
            replay.replay()
            theirs = _package_out(package, name, u8, s, 0)
            assert not replay.queue  # every draw used
        diff = np.abs(ours - theirs)
        assert diff.max() <= 0.01, (name, s, diff.max())  # measured ≤ 0.005 (float32 vs 64)


RANDOM = [c for c in list_corruptions() if corruption_info(c)["random"]]
# ratio of mean |change| (rws / package), both seeded: sampling error of the means over 8 draws
# × 2 photos is a few percent (fog, spatter: ~7 %); the noises average 150 000 pixels per draw
RATIO = {c: (0.8, 1.25) for c in RANDOM} | {
    c: (0.97, 1.03) for c in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
}
RATIO["frost"] = (0.6, 1.05)  # approximate: procedural texture, milder than the photographs


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_have_the_packages_strength(
    package: Any, photos: np.ndarray, name: str
) -> None:
    draws = 1 if name == "glass_blur" else 8  # glass: the package loops in Python (~1 s a draw)
    images = photos[:1] if name == "glass_blur" else photos
    lo, hi = RATIO[name]
    for s in SEVERITIES:
        ours, theirs = [], []
        for i, u8 in enumerate(images):
            x = _tensor(u8)
            y = _rws_out(name, x.repeat(draws, 1, 1, 1), s, 100 * s + i)
            ours.append(np.abs(y - u8).mean())
            theirs += [np.abs(_package_out(package, name, u8, s, 1000 * s + 10 * i + d) - u8).mean()
                       for d in range(draws)]  # fmt: skip
        ratio = float(np.mean(ours) / np.mean(theirs))
        assert lo <= ratio <= hi, (name, s, ratio)
