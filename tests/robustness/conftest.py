"""Shared test inputs: real photos at 32² and 96², seeded generators, a hand-written report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rws.robustness.report import Report, Variant
from rws.robustness.stats import add_holm, compare


def photos(size: int) -> torch.Tensor:
    """Seven real photos, centre-cropped square and resized to ``size``², as (7, 3, size, size)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = [data.astronaut(), data.chelsea(), data.coffee(), *load_sample_images().images]
    out = []
    for a in arrays:
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def hwc(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor → (H, W, 3) float64 array."""
    return x.permute(1, 2, 0).double().numpy()


@pytest.fixture(scope="module")
def photos32() -> torch.Tensor:
    return photos(32)


@pytest.fixture(scope="module")
def photos96() -> torch.Tensor:
    return photos(96)


def _test(test: str, delta: float, p: float, ci: list[float], gained: int, lost: int) -> dict:
    return {"test": test, "delta": delta, "p_value": p, "ci95": ci, "gained": gained,
            "lost": lost, "n": 4}  # fmt: skip


def hand_report() -> Report:
    """Two variants (base, fog@0.8) written by hand: fog at severities 1–2, pgd, mCE; the tests
    in the current shape (``test``, ``ci95``, ``p_holm``)."""
    b = {"clean": torch.tensor([1, 1, 0, 1], dtype=torch.bool)}
    v = {"clean": torch.tensor([1, 0, 1, 1], dtype=torch.bool)}
    base = Variant("base", [], 0.75, {"fog": {1: 0.5, 2: 0.25}}, 0.375, 1.0, {"pgd": 0.25}, None, b)
    fog1 = _test("mcnemar", 0.25, 0.5, [-0.2, 0.6], 1, 0)
    fog2 = _test("mcnemar", 0.0, 1.0, [-0.5, 0.5], 1, 1)
    pooled = {**_test("wilcoxon", 0.125, 0.5, [-0.25, 0.5], 2, 1), "images_up": 2, "images_down": 1}
    pgd = _test("mcnemar", 0.25, 1.0, [-0.2, 0.6], 1, 0)
    vs = {
        "clean": compare(b["clean"], v["clean"]),
        "corruptions": {"fog": {**pooled, "severities": {1: fog1, 2: fog2}}},
        "mean_corruption": dict(pooled),
        "mce": -0.2,
        "robust": {"pgd": pgd},
    }
    c = vs["corruptions"]["fog"]
    add_holm([vs["clean"], fog1, fog2, c, vs["mean_corruption"], pgd])
    patch = {"name": "fog", "alpha": 0.8, "scale": 1.0, "fingerprint": "ab" * 32, "source": ""}
    fog = Variant(
        "fog@0.8", [patch], 0.75, {"fog": {1: 0.75, 2: 0.25}}, 0.5, 0.8, {"pgd": 0.5}, vs, v
    )
    return Report([base, fog], {"data": "digits", "seed": 0, "inputs_sha256": "0" * 64})
