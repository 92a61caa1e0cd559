"""The corruption kernels against straightforward per-image references (skimage, scipy, Pillow,
OpenCV) and their fast paths against the computations they replace."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import rws.robustness.corruptions as rc
from rws.robustness.corruptions import (
    _filters,
    _jpeg,
    _linear,
    _poisson,
    _resample,
    blur,
    corrupt,
    digital,
)
from tests.robustness.conftest import gen, hwc, photos

# --- deterministic kernels against straightforward per-image references ----------------------
# Tolerances: rws computes in float32, the references in float64; 1e-5 covers float32 rounding of
# values in [0, 1] through a few dozen operations. Bilinear warps through grid_sample normalise
# coordinates in float32 (error ~1e-6 px), hence 1e-4 there.


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_contrast_saturate_match_skimage(severity: int, photos32: torch.Tensor) -> None:
    from skimage.color import hsv2rgb, rgb2hsv

    x = photos32
    bright = corrupt(x, "brightness", severity)
    sat = corrupt(x, "saturate", severity)
    con = corrupt(x, "contrast", severity)
    b_c = rc.params.CIFAR["brightness"][severity - 1]
    s_c = rc.params.CIFAR["saturate"][severity - 1]
    k_c = rc.params.CIFAR["contrast"][severity - 1]
    for i in range(len(x)):
        img = hwc(x[i])
        hsv = rgb2hsv(img)
        hsv[..., 2] = np.clip(hsv[..., 2] + b_c, 0, 1)
        np.testing.assert_allclose(hwc(bright[i]), np.clip(hsv2rgb(hsv), 0, 1), atol=1e-5)
        hsv = rgb2hsv(img)
        hsv[..., 1] = np.clip(hsv[..., 1] * s_c[0] + s_c[1], 0, 1)
        np.testing.assert_allclose(hwc(sat[i]), np.clip(hsv2rgb(hsv), 0, 1), atol=1e-5)
        m = img.mean(axis=(0, 1), keepdims=True)
        np.testing.assert_allclose(hwc(con[i]), np.clip((img - m) * k_c + m, 0, 1), atol=1e-5)


def _ref_disk(radius: float, alias: float) -> np.ndarray:
    grid, ksize = (np.arange(-8, 9), 3) if radius <= 8 else (np.arange(-radius, radius + 1), 5)
    xx, yy = np.meshgrid(grid, grid)
    d = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    d /= d.sum()
    t = np.arange(ksize) - ksize // 2
    g = np.exp(-(t**2) / (2 * alias**2))
    g /= g.sum()
    d = ndimage.correlate1d(d, g, axis=0, mode="mirror")
    return ndimage.correlate1d(d, g, axis=1, mode="mirror")


@pytest.mark.parametrize(("size", "severity"), [(32, 1), (32, 4), (32, 5), (96, 2), (96, 5)])
def test_defocus_matches_scipy(size: int, severity: int, photos32, photos96) -> None:
    x = photos32 if size == 32 else photos96
    table = rc.params.CIFAR if size == 32 else rc.params.IMAGENET
    radius, alias = table["defocus_blur"][severity - 1]
    k = _ref_disk(radius, alias)
    y = corrupt(x[:3], "defocus_blur", severity)
    for i in range(3):
        img = hwc(x[i])
        ref = np.stack([ndimage.correlate(img[..., c], k, mode="mirror") for c in range(3)], -1)
        np.testing.assert_allclose(hwc(y[i]), np.clip(ref, 0, 1), atol=1e-5)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_blur_matches_skimage(severity: int, photos32, photos96) -> None:
    from skimage.filters import gaussian

    for x, table in ((photos32, rc.params.CIFAR), (photos96, rc.params.IMAGENET)):
        y = corrupt(x[:3], "gaussian_blur", severity)
        sigma = table["gaussian_blur"][severity - 1]
        for i in range(3):
            ref = gaussian(hwc(x[i]), sigma=sigma, channel_axis=-1)
            np.testing.assert_allclose(hwc(y[i]), np.clip(ref, 0, 1), atol=1e-5)


@pytest.mark.parametrize("severity", [1, 4, 5])
def test_zoom_blur_matches_scipy_zoom(severity: int, photos32, photos96) -> None:
    def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        out = ndimage.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
        trim = (out.shape[0] - h) // 2
        return out[trim : trim + h, trim : trim + h]

    for x, table in ((photos32, rc.params.CIFAR), (photos96, rc.params.IMAGENET)):
        factors = table["zoom_blur"][severity - 1]
        y = corrupt(x[:2], "zoom_blur", severity)
        for i in range(2):
            img = hwc(x[i])
            ref = (img + sum(clipped_zoom(img, z) for z in factors)) / (len(factors) + 1)
            np.testing.assert_allclose(hwc(y[i]), np.clip(ref, 0, 1), atol=1e-5)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_pixelate_matches_pillow_box(severity: int, photos32, photos96) -> None:
    for x, table in ((photos32, rc.params.CIFAR), (photos96, rc.params.IMAGENET)):
        c = table["pixelate"][severity - 1]
        n = x.shape[-1]
        y = corrupt(x[:2], "pixelate", severity)
        for i in range(2):
            for ch in range(3):
                im = Image.fromarray(x[i, ch].numpy().astype(np.float32), mode="F")
                im = im.resize((int(n * c), int(n * c)), Image.BOX).resize((n, n), Image.BOX)
                np.testing.assert_allclose(y[i, ch].numpy(), np.asarray(im), atol=1e-5)


def test_jpeg_matches_pillow(photos32: torch.Tensor) -> None:
    y = corrupt(photos32[:2], "jpeg_compression", 5)
    for i in range(2):
        u8 = np.round(hwc(photos32[i]) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=40)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue()))) / 255.0
        np.testing.assert_allclose(hwc(y[i]), ref, atol=1e-6)


def test_glass_shuffle_matches_sequential_loop(photos32: torch.Tensor) -> None:
    g = gen(3)
    for delta, size in ((1, 32), (2, 20), (4, 17)):
        x = photos32[:3, :, :size, :size]
        dy = torch.randint(-delta, delta, (3, size, size), generator=g)
        dx = torch.randint(-delta, delta, (3, size, size), generator=g)
        y = blur.glass_shuffle(x, dy, dx, delta)
        for i in range(3):
            ref = hwc(x[i]).copy()
            for h in range(size - delta, delta, -1):
                for w in range(size - delta, delta, -1):
                    hp, wp = h + int(dy[i, h, w]), w + int(dx[i, h, w])
                    ref[h, w], ref[hp, wp] = ref[hp, wp], ref[h, w]  # the reference's "swap"
            np.testing.assert_array_equal(hwc(y[i]), ref)


def test_elastic_warp_matches_scipy(photos32: torch.Tensor) -> None:
    rng = np.random.default_rng(0)
    x = photos32[:2]
    n = x.shape[-1]
    for i in range(2):
        a = np.eye(2) + rng.uniform(-0.08, 0.08, (2, 2))
        t = rng.uniform(-2, 2, 2)
        inverse = np.concatenate([a, t[:, None]], 1)  # (col, row, 1) → source (col, row)
        dx, dy = rng.uniform(-2, 2, (2, n, n))
        y = digital.elastic_warp(
            x[i : i + 1],
            torch.from_numpy(inverse)[None],
            torch.from_numpy(dx).float()[None],
            torch.from_numpy(dy).float()[None],
        )[0]
        # scipy works in (row, col): swap the affine's axes
        mat = a[::-1, ::-1]
        off = t[::-1]
        for ch in range(3):
            warped = ndimage.affine_transform(
                x[i, ch].double().numpy(), mat, offset=off, order=1, mode="mirror"
            )
            rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            ref = ndimage.map_coordinates(warped, [rr + dy, cc + dx], order=1, mode="reflect")
            np.testing.assert_allclose(y[ch].double().numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.96, 6.4, 170.8])
def test_symmetric_gaussian_fft_matches_scipy(sigma: float) -> None:
    field = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 1, 32, 40)))
    got = _filters.gaussian_symmetric_fft(field, sigma, truncate=3.0)
    for i in range(2):
        ref = ndimage.gaussian_filter(field[i, 0].numpy(), sigma, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(got[i, 0].numpy(), ref, atol=1e-10)


def test_motion_line_matches_per_image_loop(photos32: torch.Tensor) -> None:
    x = photos32[:3]
    angles = torch.tensor([-40.0, 7.5, 44.0])
    y = _filters.motion_blur(x, 6, 2, angles)
    width = 2 * 6 + 1
    w = np.exp(-(np.arange(width) ** 2) / (2 * 2.0**2))
    w /= w.sum()
    n = x.shape[-1]
    for i in range(3):
        img = hwc(x[i])
        ref = np.zeros_like(img)
        th = np.deg2rad(float(angles[i]))
        for t in range(width):
            oy, ox = int(np.ceil(t * np.sin(th) - 0.5)), int(np.ceil(t * np.cos(th) - 0.5))
            rows = np.clip(np.arange(n) + oy, 0, n - 1)
            cols = np.clip(np.arange(n) + ox, 0, n - 1)
            ref += w[t] * img[rows][:, cols]
        np.testing.assert_allclose(hwc(y[i]), ref, atol=1e-5)


# --- fast paths against the straightforward computation they replace --------------------------


def _defocus_kernels() -> list[np.ndarray]:
    return [
        _filters.disk_kernel(float(r), float(a))
        for table in (rc.params.CIFAR, rc.params.IMAGENET)
        for r, a in table["defocus_blur"]
    ]


@pytest.mark.parametrize("size", [32, 96])
def test_defocus_separable_terms_match_fft(size: int) -> None:
    x = torch.from_numpy(np.random.default_rng(size).uniform(0, 1, (2, 3, size, size)))
    for k in _defocus_kernels():
        ref = _filters.filter2d_fft(x, k, "reflect")
        np.testing.assert_allclose(_filters.correlate(x, k, "reflect"), ref, atol=1e-12)
        got = _filters.correlate(x.float(), k, "reflect").double()
        np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("size", [32, 96])
def test_sparse_plane_operators_match_matrices(size: int) -> None:
    n = 130 if size == 32 else 3  # at 32 px more images than one CPU chunk
    x = torch.from_numpy(np.random.default_rng(size).uniform(0, 1, (n, 3, size, size)))
    for table in (rc.params.CIFAR, rc.params.IMAGENET):
        for factors in table["zoom_blur"]:
            total = x.clone()
            for z in factors:
                m = _resample.clipped_zoom_matrix(size, z)
                total += _linear.apply_axes(x, m, m)
            ref = total / (len(factors) + 1)
            np.testing.assert_allclose(_resample.zoom_mean(x, factors), ref, atol=1e-12)
            np.testing.assert_allclose(_resample.zoom_mean(x.float(), factors), ref, atol=1e-6)
        for c in table["pixelate"]:
            side = int(size * c)
            ref = _linear.apply_axes(x, *_resample.box_round_trip(size, size, side, side))
            got = _resample.box_resize_round_trip(x, side, side)
            np.testing.assert_allclose(got, ref, atol=1e-12)
    m = _resample.clipped_zoom_matrix(size, 4.0)
    ref = torch.matmul(torch.matmul(torch.from_numpy(m), x), torch.from_numpy(m).T)
    np.testing.assert_allclose(_resample.clipped_zoom(x, 4.0), ref, atol=1e-12)


def test_dense_fallback_without_sparse_products(monkeypatch: pytest.MonkeyPatch) -> None:
    # devices without sparse CSR × dense products use the separable matrices
    x = torch.rand(5, 3, 32, 32, generator=gen(2))
    cases = [(n, p) for n in ("zoom_blur", "pixelate") for p in ("cifar", "imagenet")]
    sparse = [corrupt(x, n, 4, params=p) for n, p in cases]
    monkeypatch.setattr(_resample, "sparse_ok", lambda _x: False)
    for (n, p), y in zip(cases, sparse, strict=True):
        np.testing.assert_allclose(corrupt(x, n, 4, params=p), y, atol=1e-6)


def _motion_gather(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor):
    """The per-tap gather over the whole batch that ``_filters.motion_blur`` replaces."""
    n, c, h, w = x.shape
    theta = torch.deg2rad(angle.double())
    rows, cols = torch.arange(h), torch.arange(w)
    out = torch.zeros_like(x).reshape(n, c, h * w)
    for i, wi in enumerate(_filters.motion_taps(radius, sigma)):
        if wi < 1e-9:
            break
        dy = torch.ceil(i * torch.sin(theta) - 0.5).long()
        dx = torch.ceil(i * torch.cos(theta) - 0.5).long()
        r = (rows[None, :] + dy[:, None]).clamp(0, h - 1)
        q = (cols[None, :] + dx[:, None]).clamp(0, w - 1)
        idx = (r[:, :, None] * w + q[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
        out += float(wi) * x.reshape(n, c, h * w).gather(2, idx)
    return out.reshape(n, c, h, w)


@pytest.mark.parametrize(
    ("shape", "radius", "sigma"), [((300, 3, 32, 32), 15, 8), ((90, 1, 40, 24), 6, 2)]
)
def test_motion_blur_matches_gather(shape: tuple[int, ...], radius: float, sigma: float) -> None:
    # more images than one CPU chunk, angles across [-45, 45] and beyond, ties at exact angles
    g = gen(5)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    angle = torch.rand(shape[0], generator=g, dtype=torch.float64) * 120 - 60
    angle[:4] = torch.tensor([-45.0, 0.0, 45.0, 0.0])
    got = _filters.motion_blur(x, radius, sigma, angle)
    np.testing.assert_allclose(got, _motion_gather(x, radius, sigma, angle), atol=1e-12)


def _scan(jpeg: bytes) -> bytes:
    """From the SOS marker to the end: walk the header segments by their lengths."""
    pos = 2
    while jpeg[pos + 1] != 0xDA:
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return jpeg[pos:]


def _pillow_jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 40), (24, 32)])
def test_jpeg_canvas_is_per_image_jpeg_bit_for_bit(h: int, w: int) -> None:
    rng = np.random.default_rng(h + w)
    imgs = (photos(max(h, w))[:, :, :h, :w].permute(0, 2, 3, 1) * 255).round().byte().numpy()
    flat = np.full((2, h, w, 3), 200, dtype=np.uint8)
    flat[1, : h // 2] = 0  # an edge at an MCU border
    images = np.concatenate([imgs, flat, rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)])
    for quality in (7, 40, 80):
        files = [_pillow_jpeg(img, quality) for img in images]
        ref = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
        np.testing.assert_array_equal(_jpeg.round_trip(images, quality), ref)
        if h % 16 == 0:  # the canvas path: each image's scan is the stand-alone encoding's
            buf = io.BytesIO()
            canvas = Image.fromarray(images.reshape(-1, w, 3))
            canvas.save(buf, format="JPEG", quality=quality, restart_marker_rows=h // 16)
            parts = _jpeg.split_canvas(buf.getvalue(), len(images), h)
            assert parts is not None
            assert [_scan(p) for p in parts] == [_scan(f) for f in files]


def _chi2_pvalue(samples: np.ndarray, lam: float) -> float:
    from scipy import stats

    top = int(samples.max()) + 1
    observed = np.bincount(samples, minlength=top + 1).astype(float)
    expected = stats.poisson.pmf(np.arange(top + 1), lam) * samples.size
    expected[-1] = stats.poisson.sf(top - 1, lam) * samples.size
    cells_o, cells_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):  # pool cells to an expected count ≥ 20
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            cells_o.append(acc_o)
            cells_e.append(acc_e)
            acc_o, acc_e = 0.0, 0.0
    cells_o[-1] += acc_o
    cells_e[-1] += acc_e
    return float(stats.chisquare(cells_o, np.array(cells_e) * sum(cells_o) / sum(cells_e)).pvalue)


@pytest.mark.parametrize("bits", [None, (8, 3)])
def test_poisson_sampler_follows_poisson(bits, monkeypatch: pytest.MonkeyPatch) -> None:
    # (8, 3): an 8-bit integer uniform in 8 cells per level, so most draws need the low bits and
    # the tie-breaking uniform; the production tables (24, 12) rarely do
    if bits is not None:
        monkeypatch.setattr(_poisson, "_BITS", bits[0])
        monkeypatch.setattr(_poisson, "_CELL_BITS", bits[1])
        monkeypatch.setattr(_poisson, "_SCALE", float(1 << bits[0]))
    _poisson._tables.cache_clear()
    g = gen(11)
    values = [3 / 255, 0.5, 1.0, 0.3337, 0.001]  # the last two off the 8-bit grid
    for c in (3.0, 12.0, 100.0, 500.0):
        x = torch.tensor(values, dtype=torch.float32).repeat_interleave(100_000)
        counts = (_poisson.poisson_div(x, c, g) * c).round().long().view(len(values), -1)
        for v, row in zip(values, counts, strict=True):
            lam = float(torch.tensor(v, dtype=torch.float32).double()) * c
            assert _chi2_pvalue(row.numpy(), lam) > 1e-4, (c, v)  # 40 tests: 0.4 % false alarms
    _poisson._tables.cache_clear()


def test_glass_passes_compose(photos32: torch.Tensor) -> None:
    g = gen(4)
    x = photos32[:3]
    draws = [torch.randint(-2, 2, (3, 32, 32), generator=g) for _ in range(4)]
    twice = blur.glass_shuffle(blur.glass_shuffle(x, draws[0], draws[1], 2), draws[2], draws[3], 2)
    first, second = blur.glass_sources(*draws[:2], 2), blur.glass_sources(*draws[2:], 2)
    assert torch.equal(blur._take_pixels(x, first.index_select(0, second)), twice)
