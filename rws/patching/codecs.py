"""Delta codecs: how one float32 delta is stored as plain safetensors tensors and decoded back.

Every codec stores plain tensors under ``NAME`` (float codecs) or ``NAME::<suffix>`` (quantized
codecs), so a file holds no pickle and decoding reproduces bit for bit what was measured when
encoding.

- ``fp32`` / ``fp16`` / ``bf16``: the delta cast to that dtype.
- ``int8``: blockwise absmax, written in torch: ``q = round(127·x/absmax_block)``; per block one
  float32 scale. No extra dependency.
- ``bnb8``: bitsandbytes' 8-bit blockwise codec, whose dynamic (non-uniform) code map resolves
  small values better: on real fine-tuning deltas (heavy-tailed within blocks) it beats ``int8``
  about 2-3× in error; on Gaussian data ``int8`` wins (``benchmarks/bench_size.py``).
- ``nf4`` / ``fp4``: bitsandbytes 4-bit blockwise; the ``QuantState`` is stored packed as tensors.
- ``ternary``: ``{-a, 0, +a}`` per element, the L2-optimal ``a`` per output channel, five codes a
  byte (:mod:`rws.patching.codecs_ternary`).

A delta may be sparsified first (:mod:`rws.patching.sparsify`): the codec then codes the ``k``
kept values as a 1-D tensor and ``NAME::mask`` or ``NAME::gaps`` says where they go;
``params["sparse"]`` names the method. Element-wise codecs store their main part (``NAME`` or
``NAME::q``) in the tensor's shape, so that a reader can take the shape from the file.

Every codec says whether it is ``blockwise`` (stores one scale per ``blocksize`` elements, so the
block size matters: int8, bnb8, nf4, fp4) and is looked up with :func:`get_codec`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
import torch.nn.functional as F

from rws.errors import CodecError, UsageError
from rws.patching import sparsify as sparse
from rws.patching.codec_types import SEP as SEP
from rws.patching.codec_types import Encoded as Encoded
from rws.patching.codec_types import RangeDecoder as RangeDecoder
from rws.patching.codec_types import numel as numel
from rws.patching.codec_types import part as part
from rws.patching.codecs_bnb import BnbEightBitCodec, BnbFourBitCodec
from rws.patching.codecs_ternary import TernaryCodec
from rws.registry import Registry

DEFAULT_BLOCKSIZE = 64


class Codec(Protocol):
    """Encode a float32 delta into stored tensors; decode them back to a new float32 tensor that
    the caller owns (patch arithmetic works in place on it). ``blockwise``: one scale per
    ``blocksize`` elements, so the block size is a parameter of the encoding."""

    name: str
    suffixes: tuple[str, ...]
    blockwise: bool

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        """Encode the float32 delta ``x`` of tensor ``name``."""
        ...

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        """A new float32 tensor of ``shape``; ``CodecError`` when ``enc`` is malformed."""
        ...


CODECS: Registry[Codec] = Registry("codec")


class FloatCodec:
    """Store the delta cast to a float dtype."""

    suffixes = ("",)
    blockwise = False

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        y = x.to(self.dtype).contiguous()
        if not bool(torch.isfinite(y).all()) and bool(torch.isfinite(x).all()):
            big = float(x.abs().max())
            raise UsageError(
                f"tensor {name!r}: {self.name} cannot hold it (|delta| up to {big:.3g})"
            )
        return Encoded(self.name, {"": y})

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        t = part(name, enc, "")
        if t.dtype != self.dtype:
            raise CodecError(name, f"{self.name} data stored as {t.dtype}")
        return t.to(torch.float32, copy=True).reshape(shape)  # the caller owns (and may mutate) it

    def ranges(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> RangeDecoder:
        t = part(name, enc, "")
        if t.dtype != self.dtype or t.numel() != numel(shape):
            raise CodecError(name, f"{self.name} data stored as {t.dtype}{list(t.shape)}")
        flat = t.reshape(-1)
        return RangeDecoder(1, lambda start, out: out.copy_(flat[start : start + out.numel()]))


class Int8AbsmaxCodec:
    """Blockwise absmax int8: one float32 scale per ``blocksize`` consecutive elements."""

    suffixes = ("q", "absmax")
    name = "int8"
    blockwise = True

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        flat = x.reshape(-1).to(torch.float32)
        n = flat.numel()
        blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)  # (nblocks, blocksize)
        absmax = blocks.abs().amax(dim=1)
        safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        q = torch.round(blocks * (127.0 / safe)[:, None]).clamp_(-127, 127).to(torch.int8)
        return Encoded(
            self.name,
            {"q": q.reshape(-1)[:n].reshape(x.shape).contiguous(), "absmax": absmax.contiguous()},
            {"blocksize": blocksize},
        )

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        q, absmax, bs = self._parts(name, enc, shape)
        n = q.numel()
        scale = (absmax / 127.0)[:, None]
        if n % bs == 0:  # the common case: no padding copy
            return q.view(-1, bs).to(torch.float32).mul_(scale).reshape(shape)
        blocks = F.pad(q.to(torch.float32), (0, (-n) % bs)).view(-1, bs)
        return blocks.mul_(scale).reshape(-1)[:n].reshape(shape)

    def ranges(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> RangeDecoder:
        q, absmax, bs = self._parts(name, enc, shape)
        q, scale = q.reshape(-1), torch.empty(0)  # scale: reused, grown to the largest run

        def decode_into(start: int, out: torch.Tensor) -> None:
            # float32(q) times its block's absmax / 127, each a single rounding, as in decode()
            nonlocal scale
            n, b = out.numel(), start // bs
            nb = -(-n // bs)
            if scale.numel() < nb:
                scale = torch.empty(nb)
            sc = torch.div(absmax[b : b + nb], 127.0, out=scale[:nb])
            full = n - n % bs
            if full:
                blocks = q[start : start + full].view(-1, bs)
                torch.mul(blocks, sc[: full // bs, None], out=out[:full].view(-1, bs))
            if n > full:  # the tensor's last, partial block
                torch.mul(q[start + full : start + n], sc[-1], out=out[full:])

        return RangeDecoder(bs, decode_into)

    def _parts(
        self, name: str, enc: Encoded, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        q, absmax = part(name, enc, "q").reshape(-1), part(name, enc, "absmax")
        bs = int(enc.params.get("blocksize", 0))
        n = q.numel()
        if q.dtype != torch.int8 or absmax.dtype != torch.float32 or bs <= 0:
            raise CodecError(name, "int8 data has the wrong dtypes or no blocksize")
        if absmax.numel() != -(-n // bs) or n != numel(shape):
            raise CodecError(name, f"int8 data holds {n} values / {absmax.numel()} scales")
        return q, absmax, bs


CODECS.add("fp32", FloatCodec("fp32", torch.float32), summary="float32 delta (exact)")
CODECS.add("fp16", FloatCodec("fp16", torch.float16), summary="float16 delta")
CODECS.add("bf16", FloatCodec("bf16", torch.bfloat16), summary="bfloat16 delta")
CODECS.add("int8", Int8AbsmaxCodec(), summary="blockwise absmax int8 (torch)")
CODECS.add("bnb8", BnbEightBitCodec(), summary="blockwise 8-bit dynamic map (bitsandbytes)")
CODECS.add("nf4", BnbFourBitCodec("nf4"), summary="4-bit NormalFloat, blockwise (bitsandbytes)")
CODECS.add("fp4", BnbFourBitCodec("fp4"), summary="4-bit float, blockwise (bitsandbytes)")
CODECS.add("ternary", TernaryCodec(), summary="{-a, 0, +a}, a per output channel, 1.6 bits")


def get_codec(name: str) -> Codec:
    """The codec registered under ``name``.

    Raises:
        UnknownNameError: no such codec (the message lists the choices).

    Example:
        >>> get_codec("int8").blockwise, get_codec("fp16").blockwise
        (True, False)
    """
    return CODECS.get(name)


def list_codecs(pattern: str = "*") -> list[str]:
    """Names of the registered codecs matching a glob, in registration order.

    Example:
        >>> list_codecs("fp*")
        ['fp32', 'fp16', 'fp4']
    """
    return CODECS.names(pattern)


def encode(
    name: str,
    x: torch.Tensor,
    codec: str = "fp32",
    *,
    blocksize: int = DEFAULT_BLOCKSIZE,
    sparsify: str | None = None,
    density: float = 1.0,
    seed: int = 0,
) -> Encoded:
    """Encode one delta tensor (sparsified first, if asked) and record its relative
    reconstruction error against ``x`` in ``params`` (3 significant digits).

    Args:
        name, x: the tensor's name and float delta.
        codec, blocksize: the codec and its block size (blockwise codecs).
        sparsify, density, seed: ``"topk"`` or ``"dare"`` keeping a ``density`` share of the
            elements (:mod:`rws.patching.sparsify`); ``seed`` draws DARE's drops.

    Raises:
        UsageError: a bad block size, sparsifier or density, or a codec that cannot hold ``x``.

    Example:
        >>> enc = encode("w", torch.randn(8, 8), "int8")
        >>> enc.params["rel_error"] < 0.01
        True
    """
    if blocksize < 16 or blocksize & (blocksize - 1):
        raise UsageError(f"blocksize {blocksize} must be a power of two >= 16")
    impl = get_codec(codec)
    x32 = x.detach().to("cpu", torch.float32)
    if sparsify is not None:
        d = sparse.check_density(density)
        pos, values = sparse.select(name, x32, sparsify, d, seed)
        inner = impl.encode(name, values, blocksize)
        info = {"sparse": sparsify, "density": d} | ({"seed": seed} if sparsify == "dare" else {})
        parts = {**inner.tensors, **sparse.pack_positions(pos, x32.numel())}
        enc = Encoded(codec, parts, {**inner.params, **info})
    else:
        enc = impl.encode(name, x32, blocksize)
    rel_error = 0.0
    if codec != "fp32" or sparsify is not None:
        back = decode(name, enc, tuple(x32.shape))
        norm = float(x32.norm())
        rel_error = float((back - x32).norm()) / norm if norm > 0 else 0.0
    return dataclasses.replace(enc, params={**enc.params, "rel_error": float(f"{rel_error:.3g}")})


def decode(name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode one stored tensor back to a float32 delta of ``shape``."""
    impl = get_codec(enc.codec)
    if "sparse" not in enc.params:
        return impl.decode(name, enc, tuple(shape))
    parts = {s: enc.tensors[s] for s in enc.tensors if s in sparse.POSITION_SUFFIXES}
    pos = sparse.unpack_positions(name, parts, numel(tuple(shape)))
    kept = {s: t for s, t in _items(enc) if s not in sparse.POSITION_SUFFIXES}
    params = {k: v for k, v in enc.params.items() if k not in ("sparse", "density", "seed")}
    values = impl.decode(name, Encoded(enc.codec, kept, params), (pos.numel(),))
    return sparse.scatter(pos, values, tuple(shape))


def _items(enc: Encoded) -> list[tuple[str, torch.Tensor]]:
    return [(s, enc.tensors[s]) for s in enc.tensors]


def range_decoder(name: str, enc: Encoded, shape: tuple[int, ...]) -> RangeDecoder | None:
    """A run-wise decoder of one stored tensor (its parts read now), or ``None`` when its codec
    decodes only whole tensors (bitsandbytes codecs, sparsified deltas)."""
    ranges = getattr(get_codec(enc.codec), "ranges", None)
    if ranges is None or "sparse" in enc.params:
        return None
    return ranges(name, enc, tuple(shape))
