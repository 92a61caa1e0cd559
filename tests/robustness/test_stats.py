"""Paired statistics (rws.robustness.stats): exact McNemar and Newcombe per cell, Wilcoxon and the
bootstrap over images for pooled rows, Holm, accuracy from counts."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import rws.robustness.stats as stats_mod
from rws.errors import UsageError
from rws.robustness.stats import accuracy, compare, mcnemar_p


def test_mcnemar_exact_on_hand_made_table() -> None:
    # base right / variant wrong on 2 examples, base wrong / variant right on 8, 5 agree right.
    base = torch.tensor([1] * 2 + [0] * 8 + [1] * 5 + [0] * 3, dtype=torch.bool)
    other = torch.tensor([0] * 2 + [1] * 8 + [1] * 5 + [0] * 3, dtype=torch.bool)
    res = compare(base, other)
    assert (res["gained"], res["lost"]) == (8, 2)
    assert res["delta"] == pytest.approx(6 / 18)
    # two-sided exact: 2·P(X ≤ 2), X ~ Bin(10, 1/2) = 2·(1 + 10 + 45)/1024
    assert res["p_value"] == pytest.approx(112 / 1024, abs=1e-12)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == pytest.approx(1.0)
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)


def test_accuracy_from_counts_and_doctests() -> None:
    assert accuracy(torch.tensor([True, False, True, True])) == 0.75
    assert math.isnan(accuracy(torch.zeros(0, dtype=torch.bool)))
    result = doctest.testmod(stats_mod, extraglobs={"torch": torch}, verbose=False)
    assert result.attempted >= 10 and result.failed == 0


# --- image-level tests, intervals, Holm -----------------------------------------------------------


def _bools(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_wilcoxon_p_equals_scipy_on_hand_built_examples() -> None:
    from scipy.stats import wilcoxon

    # six non-zero differences without ties: the exact null distribution. Ranks of |d|: the one
    # negative difference has rank 1, so T− = 1 and p = 2 · P(T− ≤ 1) = 2 · 2/64.
    d = [3, -1, 2, 0, 5, 4, 6, 0]
    assert stats_mod.wilcoxon_p(d) == pytest.approx(2 * 2 / 64, abs=1e-12)
    assert stats_mod.wilcoxon_p(d) == pytest.approx(wilcoxon([x for x in d if x]).pvalue)
    # 120 images' mean correctness over 4 cells, many ties and zeros: scipy's asymptotic test
    g = np.random.default_rng(7)
    base = g.integers(0, 5, 120) / 4
    other = np.clip(base + g.choice([-0.25, 0, 0, 0, 0.25, 0.5], 120), 0, 1)
    ours = stats_mod.wilcoxon_p(other - base)
    theirs = wilcoxon(other, base, zero_method="wilcox", correction=False).pvalue
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert 1e-6 < ours < 0.05  # a real shift, not a degenerate p
    assert stats_mod.wilcoxon_p([0, 0, 0]) == 1.0 and stats_mod.wilcoxon_p([]) == 1.0


def test_pooled_row_of_perfectly_correlated_cells_is_the_image_level_test() -> None:
    # 200 images; on each, all 5 cells agree (the image is easy or hard for a model at every
    # severity). 30 images gained, 15 lost, the rest unchanged.
    b1 = torch.tensor([0] * 30 + [1] * 15 + [1] * 100 + [0] * 55, dtype=torch.bool)
    v1 = torch.tensor([1] * 30 + [0] * 15 + [1] * 100 + [0] * 55, dtype=torch.bool)
    b5, v5 = b1[:, None].repeat(1, 5), v1[:, None].repeat(1, 5)
    pooled = stats_mod.compare_pooled(b5, v5)
    one_cell = stats_mod.wilcoxon_p((v1.int() - b1.int()).numpy())
    assert pooled["test"] == "wilcoxon" and pooled["p_value"] == pytest.approx(one_cell, rel=1e-12)
    # … which is McNemar's normal form on the 45 discordant images: z = (30 − 15) / √45
    from scipy.stats import norm

    assert pooled["p_value"] == pytest.approx(2 * norm.sf(15 / math.sqrt(45)), rel=1e-9)
    assert 0.02 < pooled["p_value"] < 0.03
    assert (pooled["gained"], pooled["lost"]) == (150, 75)
    assert (pooled["images_up"], pooled["images_down"], pooled["n"]) == (30, 15, 200)
    assert pooled["delta"] == pytest.approx(15 / 200)
    # the old pooled McNemar counted the 5 copies as 225 independent pairs
    old = mcnemar_p(150, 75)
    assert old < 1e-6 and old < pooled["p_value"] / 1e4
    # a single cell per image is a single cell: exact McNemar
    single = stats_mod.compare_pooled(b1[:, None], v1[:, None])
    assert single["test"] == "mcnemar" and single["p_value"] == mcnemar_p(30, 15)


def test_compare_pooled_numbers_on_a_small_table() -> None:
    b = _bools([1, 1, 0], [0, 0, 0], [1, 0, 1], [1, 1, 1])
    v = _bools([1, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1])
    r = stats_mod.compare_pooled(b, v, seed=3)
    # per image (variant − base) / 3: +1/3, +2/3, −1/3, 0
    assert r["delta"] == pytest.approx((1 / 3 + 2 / 3 - 1 / 3) / 4)
    assert r["delta"] == pytest.approx(accuracy(v) - accuracy(b))
    assert (r["gained"], r["lost"], r["images_up"], r["images_down"]) == (3, 1, 2, 1)
    assert r["p_value"] == pytest.approx(stats_mod.wilcoxon_p([1, 2, -1, 0]))
    assert r["ci95"] == list(stats_mod.bootstrap_ci(np.array([1, 2, -1, 0]) / 3, seed=3))
    assert list(r) == ["test", "delta", "p_value", "ci95", "gained", "lost", "n", "images_up",
                       "images_down"]  # fmt: skip
    with pytest.raises(UsageError, match=r"need two \(images, cells\) tensors of one shape"):
        stats_mod.compare_pooled(b, v[:, :2])


def test_holm_on_known_vectors() -> None:
    assert stats_mod.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats_mod.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert stats_mod.holm([0.4, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])
    assert stats_mod.holm([]) == []
    family = [{"p_value": 0.01}, {"p_value": 0.04}, {"p_value": 0.03}]
    stats_mod.add_holm(family)
    assert [r["p_holm"] for r in family] == pytest.approx([0.03, 0.06, 0.06])


def test_bootstrap_ci_is_deterministic_and_covers_the_true_delta() -> None:
    d = np.array([0.2] * 40 + [0.0] * 140 + [-0.4] * 20)
    assert stats_mod.bootstrap_ci(d, seed=5) == stats_mod.bootstrap_ci(d, seed=5)
    spread = np.random.default_rng(1).normal(0.1, 0.3, 200)  # distinct values: the seed shows
    assert stats_mod.bootstrap_ci(spread, seed=5) != stats_mod.bootstrap_ci(spread, seed=6)
    # the multinomial draw is the pair bootstrap: same interval as resampling pairs, to ±0.003
    g = np.random.default_rng(0)
    means = d[g.integers(0, d.size, (20_000, d.size))].mean(1)
    assert stats_mod.bootstrap_ci(d) == pytest.approx(np.quantile(means, [0.025, 0.975]), abs=3e-3)
    # coverage: 300 simulated evaluations of 300 images, 5 cells each, true Δ = Σ p·value
    values = np.array([-1, -0.6, -0.2, 0, 0.2, 0.6, 1])
    probs = np.array([0.02, 0.05, 0.08, 0.6, 0.12, 0.08, 0.05])
    true = float(values @ probs)
    sim = np.random.default_rng(2024)
    hits = 0
    for i in range(300):
        lo, hi = stats_mod.bootstrap_ci(sim.choice(values, 300, p=probs), seed=i, resamples=2000)
        hits += lo <= true <= hi
    assert 0.92 <= hits / 300 <= 0.98, hits


def test_wilson_and_newcombe_intervals() -> None:
    assert stats_mod.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats_mod.wilson_interval(0, 0) == (0.0, 1.0)
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables §8 (Cavo et al.
    # 2012): table [[59, 6], [16, 80]], Δ = −0.0621, Newcombe square-and-add −0.1186 to −0.0046
    assert stats_mod.newcombe_ci(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    base = torch.tensor([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, dtype=torch.bool)
    other = torch.tensor([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, dtype=torch.bool)
    r = compare(base, other)
    assert r["test"] == "mcnemar" and r["delta"] == pytest.approx(-10 / 161)
    assert r["ci95"] == pytest.approx([-0.1186, -0.0046], abs=1e-4)
    assert r["ci95"][0] < r["delta"] < r["ci95"][1] and r["n"] == 161
    lo, hi = compare(base, base)["ci95"]  # no change: an interval around 0, not a point
    assert lo < 0 < hi
