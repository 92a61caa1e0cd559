"""Training-time augmentation: the reference recipe's random crop, batched on the tensor's device.

The RWS and RiFT reference recipes train CIFAR models with ``RandomCrop(32, padding=4)`` and a
random horizontal flip. rws keeps the crop (zero padding, one offset per image) and leaves flips out:
digits are not mirror-symmetric (a flipped 2, 3, 4, 7 or 9 is not a digit, and 5 and 2 swap roles),
so a flip would teach the model images no class contains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_crop"]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) zero-padded by ``padding`` on every side, then cropped back
    to H×W at an offset drawn per image from ``generator`` (uniform in ``[0, 2·padding]``).

    ``padding=0`` returns ``x`` unchanged and draws nothing. The offsets are drawn on the CPU (the
    generator's device), so a run draws the same crops on any device.
    """
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[0].view(b, 1) + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1].view(b, 1) + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indexing on dims 0, 2, 3 -> (B, H, W, C); channels back to dim 1
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()
