"""The one corrupted-input builder (rws.robustness.inputs): evaluation's cells, the α search's copy
(the very images `rws eval` feeds), training's validation copy and per-batch draws (bit-stable)."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

import rws
from rws.data import Split, load_digits
from rws.errors import UnknownNameError, UsageError
from rws.models import create_model
from rws.recipes.alpha import AlphaSettings, alpha_curve
from rws.robustness.corruptions import corrupt
from rws.robustness.evaluate import evaluate
from rws.robustness.inputs import (
    EvalInputs,
    cell_seed,
    corrupt_cell,
    corrupted_inputs,
    quantize,
    random_corruption,
)

CELLS = [("fog", 2), ("fog", 3), ("gaussian_noise", 2), ("gaussian_noise", 3)]


@pytest.fixture(scope="module")
def digits() -> Split:
    return load_digits().test


def test_quantize_truncates_and_keeps_the_grid() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2, 254.9 / 255, 17 / 255])
    assert quantize(x).tolist() == [0, 127, 255, 255, 0, 254, 17]


def test_cell_is_built_per_batch_with_its_own_seed(digits: Split) -> None:
    x = digits.x[:40]
    q = corrupt_cell(x, "gaussian_noise", 3, seed=4, batch_size=16)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    for b, a in enumerate(
        range(0, 40, 16)
    ):  # batch b: its own generator, seeded by (seed, cell, b)
        g = torch.Generator().manual_seed(cell_seed(4, "gaussian_noise", 3, b))
        assert torch.equal(q[a : a + 16], quantize(corrupt(x[a : a + 16], "gaussian_noise", 3,
                                                           generator=g)))  # fmt: skip
    # any shard of batches is built alone, identical to the whole
    assert torch.equal(corrupt_cell(x, "gaussian_noise", 3, seed=4, batch_size=16, batches=[2]),
                       q[32:])  # fmt: skip
    assert corrupt_cell(x[:0], "fog", 1, seed=0).shape == (0, 3, 32, 32)


def test_eval_inputs_cache_is_the_cells(digits: Split) -> None:
    x, y = digits.x[:40], digits.y[:40]
    inp = EvalInputs.for_this_rank(x, y, CELLS, batch_size=16)
    steps: list[int] = []
    inp.build(seed=4, params="auto", source=None, device=torch.device("cpu"), advance=steps.append)
    assert sum(steps) == len(CELLS) * 3
    for cell in CELLS:
        assert torch.equal(inp.cache[cell], corrupt_cell(x, *cell, seed=4, batch_size=16))
    assert (
        inp.digests["fog/2#1"]
        == hashlib.sha256(inp.cache[("fog", 2)][16:32].numpy().tobytes()).hexdigest()
    )


def test_alpha_search_copy_is_made_of_the_evaluation_images(digits: Split) -> None:
    x = digits.x[:50]
    xc = corrupted_inputs(x, ["fog", "gaussian_noise"], (2, 3), seed=4, batch_size=16)
    cells = {cell: corrupt_cell(x, *cell, seed=4, batch_size=16) for cell in CELLS}
    for j in range(len(x)):  # example j sits in cell j mod 4, as rws eval feeds it there
        assert torch.equal(xc[j], cells[CELLS[j % 4]][j].float() / 255), j
    assert corrupted_inputs(x, [], 3, seed=0) is x  # nothing to corrupt


def test_alpha_search_measures_what_evaluate_measures(digits: Split) -> None:
    """End to end: α = 0's corrupted accuracy of the α search equals the accuracy `rws eval`
    reports on the same examples in the same cells (same seed and batch size)."""
    x, y = digits.x[:48], digits.y[:48]
    torch.manual_seed(0)
    model = create_model("small-cnn").eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.weight.add_(0.01)
    patch = rws.extract(model, other)
    settings = AlphaSettings(grid=(0.0,), corruptions=("fog", "gaussian_noise"), severity=(2, 3),
                             attack_steps=0, batch_size=16, seed=4, copy="cycled")  # fmt: skip
    curve = alpha_curve(model, patch, Split(x, y), settings)
    report = evaluate(model, (x, y), corruptions=["fog", "gaussian_noise"], severities=(2, 3),
                      batch_size=16, seed=4, device="cpu")  # fmt: skip
    right = [bool(report.base.per_example["{}/{}".format(*CELLS[j % 4])][j]) for j in range(48)]
    assert curve.base.corrupted == sum(right) / 48


def _legacy_training_copy(x, corruptions, severity, seed, batch_size):
    """Fine-tuning's validation copy as rws built it before the builder was shared (pinned)."""
    lo, hi = severity
    cells = [(c, s) for c in corruptions for s in range(lo, hi + 1)]
    h = hashlib.sha256(f"{seed}/val".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)
    out = x.clone()
    for k, (name, sev) in enumerate(cells):
        idx = torch.arange(k, len(x), len(cells))
        for a in range(0, len(idx), batch_size):
            chunk = idx[a : a + batch_size]
            out[chunk] = corrupt(x[chunk], name, sev, generator=g)
    return out


def test_training_draws_are_unchanged(digits: Split) -> None:
    x = digits.x[:70]
    got = corrupted_inputs(x, ["fog", "gaussian_noise"], (3, 5), seed=7, batch_size=4,
                           draws="train")  # fmt: skip
    assert torch.equal(got, _legacy_training_copy(x, ["fog", "gaussian_noise"], (3, 5), 7, 4))
    assert got.dtype == torch.float32  # not quantised


def test_random_corruption_draws_name_then_severity(digits: Split) -> None:
    x = digits.x[:8]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = random_corruption(x, ("fog", "contrast", "gaussian_noise"), (2, 5), g1)
    name = ("fog", "contrast", "gaussian_noise")[int(torch.randint(0, 3, (1,), generator=g2))]
    sev = int(torch.randint(2, 6, (1,), generator=g2))
    assert torch.equal(out, corrupt(x, name, sev, generator=g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    # a single choice draws nothing for it
    g3, g4 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_corruption(x, ("fog",), (4, 4), g3), corrupt(x, "fog", 4,
                                                                            generator=g4))  # fmt: skip


def test_bad_arguments(digits: Split) -> None:
    x = digits.x[:4]
    with pytest.raises(UnknownNameError, match="unknown corruption 'fgo'"):
        corrupted_inputs(x, ["fgo"], 3, seed=0)
    with pytest.raises(UsageError, match="severity must be 1–5 or a range"):
        corrupted_inputs(x, ["fog"], (4, 2), seed=0)
    with pytest.raises(UsageError, match="batch_size must be a positive integer, got 0"):
        corrupted_inputs(x, ["fog"], 3, seed=0, batch_size=0)
    with pytest.raises(UsageError, match="draws must be 'eval' or 'train'"):
        corrupted_inputs(x, ["fog"], 3, seed=0, draws="test")  # type: ignore[arg-type]
