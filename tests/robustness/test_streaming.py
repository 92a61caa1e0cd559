"""Streamed evaluation: a DataLoader read once gives exactly the in-memory evaluation's results."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rws
from rws.errors import UsageError
from rws.robustness.evaluate import evaluate
from rws.robustness.streaming import is_batch_stream
from tests.robustness.test_evaluate import trained_models

SETTINGS = dict(corruptions=["gaussian_noise", "contrast"], severities=(2, 5), attack="pgd",
                steps=3, seed=3, masking_examples=16, device="cpu")  # fmt: skip


def test_loader_equals_in_memory_evaluation() -> None:
    m = trained_models()
    x, y = m.data.test.x[:150], m.data.test.y[:150]
    memory = evaluate(m.clean, (x, y), patches=[(m.patch, 0.5)], batch_size=64, **SETTINGS)
    batches = (
        (xb, yb) for xb, yb in DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    )  # a generator: no len, read once
    streamed = evaluate(m.clean, batches, patches=[(m.patch, 0.5)], **SETTINGS)
    assert streamed.settings["streamed"] and streamed.settings["n_examples"] == 150
    for a, b in zip(memory.variants, streamed.variants, strict=True):
        assert a.name == b.name and a.per_example.keys() == b.per_example.keys()
        for key in a.per_example:
            assert torch.equal(a.per_example[key], b.per_example[key]), (a.name, key)
        assert (a.clean, a.corruptions, a.robust) == (b.clean, b.corruptions, b.robust)
    assert memory.variants[1].vs_base == streamed.variants[1].vs_base
    # uint8 batches and n_examples: the first 100 examples only
    u8 = DataLoader(TensorDataset((x * 255).round().to(torch.uint8), y), batch_size=64)
    short = evaluate(m.clean, u8, corruptions=["contrast"], severities=[5], n_examples=100)
    assert short.settings["n_examples"] == 100 and short.base.per_example["clean"].numel() == 100


def test_bad_streams_are_one_line_errors() -> None:
    m = trained_models()
    assert not is_batch_stream((m.data.test.x, m.data.test.y)) and not is_batch_stream("digits")
    assert is_batch_stream([(m.data.test.x[:4], m.data.test.y[:4])])
    with pytest.raises(UsageError, match="batch 0 of the data is Tensor, not an"):
        evaluate(m.clean, [m.data.test.x[:4]], corruptions=["fog"], severities=[1])
    with pytest.raises(UsageError, match="4 images but 3 labels"):
        evaluate(m.clean, [(m.data.test.x[:4], m.data.test.y[:3])], corruptions=["fog"])
    with pytest.raises(UsageError, match="yielded no examples"):
        evaluate(m.clean, [], corruptions=["fog"])
    with pytest.raises(UsageError, match="a baseline needs the in-memory evaluation"):
        rws.evaluate(m.clean, [], baseline="alexnet")
