"""Random-crop augmentation: exact crops of the zero-padded image, seeded, off by default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rws.errors import UsageError
from rws.training.augment import random_crop, random_flip
from rws.training.config import TrainConfig


def test_each_image_is_a_crop_of_its_padded_self() -> None:
    x = torch.rand(64, 3, 8, 10)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape and out.is_contiguous()
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        hits = [(r, c) for r in range(5) for c in range(5)
                if torch.equal(out[i], padded[i, :, r:r + 8, c:c + 10])]  # fmt: skip
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) >= 15  # offsets are drawn per image, over the whole 5×5 range


def test_seeded_and_zero_padding_is_identity() -> None:
    x = torch.rand(16, 3, 8, 8)
    a = random_crop(x, 4, torch.Generator().manual_seed(3))
    b = random_crop(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert random_crop(x, 0, g) is x and torch.equal(g.get_state(), state)  # nothing drawn


def test_config_field_is_validated_and_written_only_when_set() -> None:
    assert "crop_padding" not in TrainConfig(epochs=1).to_dict()  # older runs' files unchanged
    cfg = TrainConfig(epochs=1, crop_padding=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["crop_padding"] == 4
    with pytest.raises(UsageError, match="crop_padding must be an integer ≥ 0"):
        TrainConfig(epochs=1, crop_padding=-1)


def test_training_with_crops_is_deterministic_and_differs() -> None:
    from rws.data import load_digits
    from rws.training import finetune, init_model

    data = load_digits()

    def run(pad: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(epochs=1, lr=3e-3, optimizer="adam", batch_size=64, seed=0,
                          device="cpu", crop_padding=pad)  # fmt: skip
        return finetune(init_model("small-cnn", 10, seed=0), data, cfg).model.state_dict()

    a, b, plain = run(4), run(4), run(0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], plain["conv1.weight"])


def test_reflect_fill_crops_the_reflected_image() -> None:
    x = torch.rand(32, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1), fill="reflect")
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8])
                   for r in range(5) for c in range(5)), i  # fmt: skip
    assert not torch.equal(out, random_crop(x, 2, torch.Generator().manual_seed(1)))


def test_flip_mirrors_about_half_the_images_seeded() -> None:
    x = torch.rand(400, 3, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(a != b for a, b in zip(same, mirrored, strict=True))  # each image one or the other
    assert 160 <= sum(mirrored) <= 240  # p = 0.5 (measured: 205 of 400)
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(0)))


def test_reference_options_validated_and_written_only_when_set() -> None:
    plain = TrainConfig(epochs=1).to_dict()
    assert not {"crop_fill", "flip", "frozen_mode"} & set(plain)
    cfg = TrainConfig(epochs=1, crop_padding=4, crop_fill="reflect", flip=True, frozen_mode="train")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad, match in (({"crop_fill": "edge"}, "crop_fill"), ({"flip": 1}, "flip"),
                       ({"frozen_mode": "freeze"}, "frozen_mode")):  # fmt: skip
        with pytest.raises(UsageError, match=match):
            TrainConfig(epochs=1, **bad)
