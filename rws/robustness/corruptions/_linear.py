"""Linear maps on the image plane, applied to a batch ``(N, C, H, W)`` as matrix products.

A separable map ``mh @ x @ mwᵀ`` (or a short sum of them) runs as two GEMMs; a map shared by the whole
batch with few non-zeros per output pixel (zooms, box resizes) runs as one sparse CSR product.
On the CPU the batch is streamed in cache-sized chunks, which also keeps large temporaries off the
allocator; elsewhere it runs in one piece. Chunking does not change any result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

CHUNK_BYTES = 1 << 20  # per chunk of the input on the CPU: about the size of a core's L2 cache
_SPARSE_DEVICES = ("cpu", "cuda")  # device types with a sparse CSR × dense product


def chunks(x: torch.Tensor, nbytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Slices of ``x``'s first axis: about ``nbytes`` each on the CPU, the whole batch elsewhere."""
    n = x.shape[0]
    per = max(n, 1)
    if x.device.type == "cpu" and x.numel():
        per = max(1, nbytes // (x[0].numel() * x.element_size()))
    for start in range(0, n, per):
        yield slice(start, min(n, start + per))


def apply_axes_sum(
    x: torch.Tensor, mhs: Sequence[np.ndarray], mws: Sequence[np.ndarray]
) -> torch.Tensor:
    """``Σₖ mhs[k] @ x @ mws[k]ᵀ`` on the last two axes.

    The columns of all terms come from one GEMM ``x (…·H, W) @ [mw₀ᵀ | mw₁ᵀ | …]``, whose rows are
    read as ``(H·r, W)`` blocks and contracted with ``[mh₀ | mh₁ | …]`` (interleaved) in a second.
    """
    n, c, h, w = x.shape
    r = len(mhs)
    mw = np.stack(mws)  # (r, W, W)
    mh = np.stack(mhs)  # (r, H, H)
    # wcat[w', k·W + j] = mw[k][j, w'];  hcat[i, h'·r + k] = mh[k][i, h']
    wcat = torch.as_tensor(mw.transpose(2, 0, 1).reshape(w, r * w), dtype=x.dtype, device=x.device)
    hcat = torch.as_tensor(mh.transpose(1, 2, 0).reshape(h, h * r), dtype=x.dtype, device=x.device)
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    for s in chunks(x):
        cols = torch.matmul(x[s].reshape(-1, w), wcat)  # (nb·C·H, r·W)
        torch.matmul(hcat, cols.view(-1, c, h * r, w), out=out[s])
    return out


def apply_axes(x: torch.Tensor, mh: np.ndarray, mw: np.ndarray) -> torch.Tensor:
    """``mh @ x @ mwᵀ`` on the last two axes (a separable linear map)."""
    return apply_axes_sum(x, [mh], [mw])


def kron_sum_csr(
    terms: Sequence[tuple[float, np.ndarray, np.ndarray]],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The ``(H·W, H·W)`` CSR matrix of ``Σ weight · mh ⊗ mw`` (row-major pixels), summed in float64.

    Applied to a flattened image it gives ``Σ weight · mh @ img @ mwᵀ``.
    """
    rows, cols, vals = [], [], []
    for weight, mh, mw in terms:
        w = mw.shape[0]
        hr, hc = np.nonzero(mh)
        wr, wc = np.nonzero(mw)
        rows.append((hr[:, None] * w + wr[None, :]).ravel())
        cols.append((hc[:, None] * w + wc[None, :]).ravel())
        vals.append((weight * mh[hr, hc][:, None] * mw[wr, wc][None, :]).ravel())
    size = terms[0][1].shape[0] * terms[0][2].shape[0]
    coo = torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)])),
        torch.as_tensor(np.concatenate(vals), dtype=torch.float64),
        (size, size),
        check_invariants=True,
    ).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is not
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        return coo.to(dtype).to_sparse_csr().to(device)


def sparse_ok(x: torch.Tensor) -> bool:
    """Whether ``x``'s device multiplies sparse CSR by dense matrices."""
    return x.device.type in _SPARSE_DEVICES


def apply_plane(x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """Each image plane of ``x`` ``(N, C, H, W)`` times the CSR matrix ``op`` ``(H·W, H·W)``.

    Per chunk, the planes are transposed into columns, multiplied and transposed back.
    """
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    for s in chunks(x):
        planes = x[s].reshape(-1, h * w)
        cols = torch.sparse.mm(op, planes.t().contiguous())  # (H·W, nb·C)
        out[s].view(-1, h * w).copy_(cols.t())
    return out
