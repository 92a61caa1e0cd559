"""Training-time augmentation: the reference recipes' random crop and flip, batched on the
tensor's device.

The RWS and RiFT reference recipes train CIFAR models with ``RandomCrop(32, padding=4)`` (RiFT's
with ``padding_mode="reflect"``) and a random horizontal flip. rws's own recipes keep the crop
(zero padding, one offset per image) and leave flips out: digits are not mirror-symmetric (a
flipped 2, 3, 4, 7 or 9 is not a digit, and 5 and 2 swap roles), so a flip teaches the model
images no class contains. The flip is here for the RiFT reference recipe
(``rws rift --recipe reference``), which reproduces the reference's choices as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_flip"]


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator, *, fill: str = "zero"
) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) padded by ``padding`` on every side (``fill``: ``"zero"``,
    or ``"reflect"`` as torchvision's ``padding_mode="reflect"``), then cropped back to H×W at an
    offset drawn per image from ``generator`` (uniform in ``[0, 2·padding]``).

    ``padding=0`` returns ``x`` unchanged and draws nothing. The offsets are drawn on the CPU (the
    generator's device), so a run draws the same crops on any device.
    """
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    pad = (padding, padding, padding, padding)
    padded = F.pad(x, pad, mode="reflect") if fill == "reflect" else F.pad(x, pad)
    rows = offsets[0].view(b, 1) + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1].view(b, 1) + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indexing on dims 0, 2, 3 -> (B, H, W, C); channels back to dim 1
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) mirrored left-right with probability ``p``, drawn per image
    from ``generator`` on the CPU (as torchvision's ``RandomHorizontalFlip``)."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
