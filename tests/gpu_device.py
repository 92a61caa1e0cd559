"""The device the ``gpu``-marked tests run on: CUDA, skipped without it, or the CPU standing in
(``RWS_GPU_TEST_DEVICE=cpu pytest -m gpu``: the code paths run, the comparisons hold trivially)."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("RWS_GPU_TEST_DEVICE", "cuda")
DEV = torch.device(DEVICE)
GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
