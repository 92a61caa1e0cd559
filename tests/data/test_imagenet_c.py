"""ImageNet-C's folder layout: cells read in the clean set's order, evaluated end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import rws
from rws.data import load_cifar_c, resolve_data
from rws.data.imagenet_c import imagenet_c_corruptions, is_imagenet_c
from rws.errors import InputFileError, MalformedInputError, UsageError

CLASSES = ("n01", "n02")
STEMS = ("ILSVRC2012_val_3", "ILSVRC2012_val_1", "ILSVRC2012_val_2")


def _make(root: Path, size: int = 16) -> dict[str, int]:
    """Clean 40×30 images and fog/3 cells whose gray level encodes the image's index."""
    code = {}
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(CLASSES):
        for si, stem in enumerate(STEMS):
            key = f"{cls}/{stem}"
            code[key] = 20 * (3 * ci + si) + 10
            (root / "clean" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                root / "clean" / cls / f"{stem}.JPEG", format="JPEG"
            )
            cell = root / "fog" / "3" / cls
            cell.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size, size, 3), code[key], dtype=np.uint8)).save(
                cell / f"{stem}.png"
            )
    return code


def test_cells_follow_the_clean_order(tmp_path: Path) -> None:
    code = _make(tmp_path)
    assert is_imagenet_c(tmp_path) and imagenet_c_corruptions(tmp_path) == ["fog"]
    data, source = resolve_data(f"imagenet-c:{tmp_path}")
    assert source == str(tmp_path) and data.classes == CLASSES and len(data.val) == 0
    assert data.test.x.shape == (6, 3, 16, 16)  # centre crop at the cells' size
    assert data.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    cell = load_cifar_c(tmp_path, "fog", 3)
    expected = [code[f"{c}/{s}"] for c in CLASSES for s in sorted(STEMS)]
    got = (cell.x[:, 0, 0, 0] * 255).round().int().tolist()
    assert got == expected and cell.y.tolist() == data.test.y.tolist()


def test_evaluate_reads_the_released_cells(tmp_path: Path) -> None:
    _make(tmp_path)

    class Gray(nn.Module):  # class 1 iff the image is brighter than mid-gray
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], dim=1)

    report = rws.evaluate(Gray(), f"imagenet-c:{tmp_path}", corruptions=["fog"], severities=[3])
    # gray levels 10, 30, 50 (class n01) and 70, 90, 110 (n02) are all darker than mid-gray
    assert report.base.corruptions["fog"][3] == pytest.approx(0.5)
    assert report.to_dict()["settings"]["corruption_source"] == str(tmp_path)


def test_bad_layouts_are_one_line_errors(tmp_path: Path) -> None:
    _make(tmp_path)
    (tmp_path / "fog" / "3" / "n02" / "ILSVRC2012_val_2.png").unlink()
    with pytest.raises(MalformedInputError, match=r"1 clean images have no corrupted copy"):
        load_cifar_c(tmp_path, "fog", 3)
    with pytest.raises(InputFileError, match=r"no such ImageNet-C cell \(corruptions found: fog\)"):
        load_cifar_c(tmp_path, "fog", 2)
    with pytest.raises(UsageError, match="cells are 16×16; --img-size 32"):
        resolve_data(f"imagenet-c:{tmp_path}", size=32)
    with pytest.raises(UsageError, match="released arrays are compared at their stored size"):
        resolve_data(f"cifar10c:{tmp_path}", size=32)
    empty = tmp_path / "other"
    (empty / "fog" / "1" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "fog" / "1" / "a" / "x.png")
    with pytest.raises(InputFileError, match="missing: put the clean images there"):
        resolve_data(f"imagenet-c:{empty}")


def test_folder_spec_takes_an_image_size(tmp_path: Path) -> None:
    _make(tmp_path)
    data, source = resolve_data(f"folder:{tmp_path / 'clean'}", size=24)
    assert source is None and data.test.x.shape[1:] == (3, 24, 24)
