"""rws batched corruptions vs the ``imagecorruptions`` package per image, on the CPU.

All 15 benchmark corruptions at one severity over N 32×32 crops of real photos. The peer
(``pip install --no-deps imagecorruptions opencv-python-headless``; not an rws dependency) uses the
ImageNet-C tables whatever the image size, so rws runs with ``params="imagenet"`` for the like-for-like
ratio; the ``cifar`` column is what rws does by default at 32×32. The peer needs shims for current
numpy / scipy / scikit-image / setuptools; they live here, not in rws.

Each side is timed ``BENCH_REPEATS`` times per corruption (interleaved, after one warm-up call of rws
on a few images: kernel tables are cached per shape); the table shows the medians, the ratio per
corruption is peer median / rws median, and the total ratio is the sum of the peer's medians over the
sum of rws's. The load average is printed before and after: on a shared machine the numbers are only
as good as it was quiet.

Run: ``python benchmarks/bench_corruptions.py`` (``BENCH_THREADS=2``, ``BENCH_REPEATS=5``,
``BENCH_N=500`` to change the defaults).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
import types

import numpy as np
import torch
from PIL import Image

from rws.robustness.corruptions import CORRUPTIONS, corrupt

N = int(os.environ.get("BENCH_N", 2000))
SIZE = 32
SEVERITY = 3
SEED = 0
# The peer runs on one core (numpy / cv2 per image); rws gets one thread too unless BENCH_THREADS
# says otherwise (on a shared, oversubscribed machine extra OpenMP threads only spin).
THREADS = int(os.environ.get("BENCH_THREADS", 1))
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))


def make_images() -> np.ndarray:
    """``(N, SIZE, SIZE, 3)`` uint8 crops of scikit-image / scikit-learn photos (fixed seed)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.chelsea(), data.coffee(), *load_sample_images().images]
    photos = [np.asarray(Image.fromarray(p).resize((160, 160), Image.BICUBIC)) for p in photos]
    rng = np.random.default_rng(SEED)
    out = np.empty((N, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(N):
        p = photos[i % len(photos)]
        r, c = rng.integers(0, p.shape[0] - SIZE, 2)
        out[i] = p[r : r + SIZE, c : c + SIZE]
    return out


def load_peer() -> tuple[object | None, str]:
    """Import ``imagecorruptions`` with its shims; ``(None, why)`` when it cannot run."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None:
        return None, "imagecorruptions is not installed"
    if importlib.util.find_spec("cv2") is None:
        return None, "imagecorruptions needs cv2 (opencv-python-headless)"
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # removed in numpy 2
    if importlib.util.find_spec("pkg_resources") is None:  # gone from recent setuptools
        root = os.path.dirname(spec.origin)
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda _pkg, path: os.path.join(root, path)
        sys.modules["pkg_resources"] = shim
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)  # removed in scipy 1.14+
    import imagecorruptions
    import imagecorruptions.corruptions as ic
    from skimage.filters import gaussian

    def gaussian_compat(image, sigma=1, multichannel=None, **kw):  # multichannel= removed
        if multichannel:
            kw["channel_axis"] = -1
        return gaussian(image, sigma=sigma, **kw)

    ic.gaussian = gaussian_compat
    return imagecorruptions, ""


def time_peer(peer, images: np.ndarray, name: str) -> float:
    np.random.seed(SEED)  # the peer draws from numpy's global RNG
    start = time.perf_counter()
    for img in images:
        peer.corrupt(img, severity=SEVERITY, corruption_name=name)
    return time.perf_counter() - start


def time_rws(x: torch.Tensor, name: str, params: str) -> float:
    g = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    corrupt(x, name, SEVERITY, params=params, generator=g)
    return time.perf_counter() - start


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    torch.set_num_threads(THREADS)
    images = make_images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    peer, why = load_peer()
    print(
        f"{N} images {SIZE}x{SIZE}, severity {SEVERITY}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU, median of {REPEATS} runs per cell; {load()}"
    )
    if peer is None:
        print(f"peer not run: {why}")
    header = (
        f"{'corruption':18s} {'peer s':>8s} {'rws(imagenet) s':>16s} {'rws(cifar) s':>13s} "
        f"{'ratio':>7s}"
    )
    print(header)
    peer_t, rws_t, cifar_t, ratios, matched = [], [], [], [], []
    for name in CORRUPTIONS:
        for params in ("imagenet", "cifar"):  # warm-up: per-shape tables and kernels
            corrupt(x[:8], name, SEVERITY, params=params, generator=torch.Generator())
        runs: dict[str, list[float]] = {"rws": [], "cifar": [], "peer": []}
        failed = ""
        for _ in range(REPEATS):
            runs["rws"].append(time_rws(x, name, "imagenet"))
            runs["cifar"].append(time_rws(x, name, "cifar"))
            if peer is not None and not failed:
                try:
                    runs["peer"].append(time_peer(peer, images, name))
                except Exception as exc:  # report, keep going
                    failed = f"{type(exc).__name__}: {exc}"
        t_rws, t_cifar = statistics.median(runs["rws"]), statistics.median(runs["cifar"])
        rws_t.append(t_rws)
        cifar_t.append(t_cifar)
        if runs["peer"] and not failed:
            t_peer = statistics.median(runs["peer"])
            peer_t.append(t_peer)
            matched.append(t_rws)
            ratios.append(t_peer / t_rws)
            print(f"{name:18s} {t_peer:8.3f} {t_rws:16.4f} {t_cifar:13.4f} {t_peer / t_rws:6.1f}x")
        else:
            if failed:
                print(f"{name:18s} peer failed: {failed}")
            print(f"{name:18s} {'-':>8s} {t_rws:16.4f} {t_cifar:13.4f} {'-':>7s}")
    print(
        f"{'total':18s} {sum(peer_t):8.3f} {sum(rws_t):16.4f} {sum(cifar_t):13.4f} "
        + (
            f"{sum(peer_t) / sum(matched):6.1f}x (over the corruptions the peer ran)"
            if peer_t
            else ""
        )
    )
    print(
        f"{'median':18s} {statistics.median(peer_t) if peer_t else float('nan'):8.3f} "
        f"{statistics.median(rws_t):16.4f} {statistics.median(cifar_t):13.4f} "
        + (f"{statistics.median(ratios):6.1f}x (median of per-corruption ratios)" if ratios else "")
    )
    print(load())


if __name__ == "__main__":
    main()
