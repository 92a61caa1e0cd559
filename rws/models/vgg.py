"""VGG-16 for 32×32 inputs, as in the Robust Weight Signatures reference code.

Layout of ``models/vgg.py`` in VITA-Group/Robust_Weight_Signatures: configuration D's 13 3×3 convs
(with bias) in ``features`` (max-pool after the 2nd, 4th, 7th and 10th conv, none after the last),
a global average pool and a single ``classifier`` Linear(512, classes). ``vgg16`` is the reference's
model (no BatchNorm: convs at ``features.0, 2, 5, 7, 10 …``); ``vgg16-bn`` inserts a BN after every
conv (convs at ``features.0, 3, 7, 10 …``). 14.7 M conv parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import register_model

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512
)  # fmt: skip


class VGG(nn.Module):
    """Convs from a configuration (ints: conv widths, ``"M"``: 2×2 max-pool), GAP, one Linear.

    Args:
        cfg: layer configuration, e.g. :data:`VGG16_CFG`.
        num_classes: size of the output layer.
        batch_norm: put a BatchNorm after every conv.
        mean: per-channel input mean used by the ``normalize`` layer.
        std: per-channel input std used by the ``normalize`` layer.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        num_classes: int = 10,
        *,
        batch_norm: bool = False,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(in_ch, int(v), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, classes)
        out = self.avgpool(self.features(self.normalize(x)))
        return self.classifier(out.flatten(1))  # (B, 512, 1, 1) -> (B, 512)


_URL = "https://arxiv.org/abs/1409.1556"


@register_model(
    "vgg16", summary="VGG-16 without BN, GAP + one Linear (the RWS reference)", url=_URL
)
def vgg16(num_classes: int = 10, **kw: Any) -> nn.Module:
    """VGG-16 as in the Robust Weight Signatures code: 13 convs, no BatchNorm."""
    return VGG(VGG16_CFG, num_classes, batch_norm=False, **kw)


@register_model("vgg16-bn", summary="VGG-16 with BN after every conv, GAP + one Linear", url=_URL)
def vgg16_bn(num_classes: int = 10, **kw: Any) -> nn.Module:
    """VGG-16 with BatchNorm (the reference's ``vgg16_bn`` layout)."""
    return VGG(VGG16_CFG, num_classes, batch_norm=True, **kw)
