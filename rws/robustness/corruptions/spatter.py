"""The spatter corruption (validation set): water drops or mud, with the OpenCV steps it needs.

The water branch of the reference runs cv2 ``Canny``, ``distanceTransform``, ``blur``,
``equalizeHist`` and ``filter2D`` on uint8 layers; they are re-implemented here for batches (values
stay integers held in floats).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rws.robustness.corruptions import _filters, _rng
from rws.robustness.corruptions.registry import register_corruption

_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan 22.5° in Q15, as cv2


def _shift(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """``out[..., r, c] = x[..., r + dy, c + dx]``, ``fill`` outside the image."""
    h, w = x.shape[-2:]
    p = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), value=fill)
    return p[..., abs(dy) + dy : abs(dy) + dy + h, abs(dx) + dx : abs(dx) + dx + w]


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``cv2.Canny(img, low, high)`` (3×3 Sobel, L1 magnitude) as bool edges ``(N, 1, H, W)``."""
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    gx = _filters.filter2d(img, sobel_x, "edge")
    gy = _filters.filter2d(img, sobel_x.T, "edge")
    mag = gx.abs() + gy.abs()

    def nb(dy: int, dx: int) -> torch.Tensor:
        return _shift(mag, dy, dx, 0.0)

    ax, ay = gx.abs(), gy.abs() * (1 << 15)
    tg22 = ax * _TG22
    tg67 = tg22 + ax * (1 << 16)
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg67)
    diagonal = ~horizontal & ~vertical
    same_sign = (gx < 0) == (gy < 0)  # cv2: s = -1 when the sign bits differ
    keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep_d = torch.where(
        same_sign, (mag > nb(-1, -1)) & (mag > nb(1, 1)), (mag > nb(-1, 1)) & (mag > nb(1, -1))
    )
    peak = (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)
    weak = peak & (mag > low)
    edges = weak & (mag > high)
    while True:  # hysteresis: grow strong edges through 8-connected weak ones
        grown = weak & (F.max_pool2d(edges.to(img.dtype), 3, 1, 1) > 0)
        if torch.equal(grown | edges, edges):
            return edges
        edges = grown | edges


def chamfer_distance(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """``cv2.distanceTransform(DIST_L2, 5)`` to the nearest ``zero`` pixel, exact up to ``cap``.

    The 5×5 chamfer metric (steps 1, 1.4 and 2.1969) by relaxation; outside the image counts as
    far away. Paths of cost ≤ cap take at most ``ceil(cap)`` steps, so that many rounds suffice.
    """
    big = 1e6
    d = torch.where(zero, 0.0, big).to(torch.float32)
    steps = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]
    cost = {1: 1.0, 2: 1.4, 5: 2.1969}
    moves = [(dy, dx, cost[dy * dy + dx * dx]) for dy, dx in steps if dy * dy + dx * dx in cost]
    for _ in range(int(np.ceil(cap)) + 1):
        best = d
        for dy, dx, cst in moves:
            best = torch.minimum(best, _shift(d, dy, dx, big) + cst)
        if torch.equal(best, d):
            break
        d = best
    return d.clamp_max(cap)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist`` per image on integer values 0–255 ``(N, 1, H, W)``."""
    n = img.shape[0]
    flat = img.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.long, device=img.device).scatter_add_(
        1, flat, torch.ones_like(flat)
    )
    first = (hist > 0).long().argmax(1, keepdim=True)  # (N, 1)
    first_count = hist.gather(1, first)
    scale = (255.0 / (total - first_count).clamp_min(1).to(torch.float32)).to(torch.float32)
    running = hist.cumsum(1) - hist.cumsum(1).gather(1, first)
    lut = torch.round(running.to(torch.float32) * scale).clamp(0, 255)
    lut = torch.where(first_count == total, first.to(torch.float32).expand(n, 256), lut)
    return lut.gather(1, flat).reshape(img.shape).to(img.dtype)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """``cv2.blur(x, (3, 3))``: 3×3 mean, reflect-101 border."""
    return _filters.filter2d(x, np.full((3, 3), 1.0 / 9.0), "reflect")


@register_corruption("spatter", family="weather", extra=True)
def spatter(x: torch.Tensor, c: tuple[float, ...], *, generator: torch.Generator) -> torch.Tensor:
    """Water drops (``c[5] == 0``) or mud splashes (``c[5] == 1``); validation corruption.

    ``c = (mean, std, σ, threshold, strength, kind)``: a layer ``N(mean, std²)`` blurred by σ and
    zeroed below the threshold. Water: edge distances of the layer shape a pale turquoise
    (175, 238, 238) sheen of peak ``strength`` added to the image. Mud: the mask ``layer >
    threshold`` blurred by ``strength`` and kept where ≥ 0.8 blends in brown (63, 42, 20).
    """
    mean, std, sigma, threshold, strength = (float(v) for v in c[:5])
    n, _, h, w = x.shape
    layer = _filters.gaussian(_rng.normal((n, 1, h, w), generator, x, mean, std), sigma)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    if int(c[5]) == 0:
        liquid = torch.floor(layer.clamp(0.0, 1.0) * 255.0)  # the uint8 layer
        dist = chamfer_distance(canny(liquid, 50.0, 150.0), 20.0).to(x.dtype)
        dist = torch.floor(_box3(dist))
        dist = equalize_hist(dist)
        kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
        dist = torch.round(_filters.filter2d(dist, kernel, "reflect")).clamp(0.0, 255.0)
        dist = torch.round(_box3(dist))
        m = liquid * dist
        peak = m.amax(dim=(2, 3), keepdim=True)
        m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * strength
        color = torch.tensor([175, 238, 238], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x + m * (color / 255.0)
    mask = (layer > threshold).to(x.dtype)
    mask = _filters.gaussian(mask, strength)
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    color = torch.tensor([63, 42, 20], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
    return x * (1.0 - mask) + color * mask
