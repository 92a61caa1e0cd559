"""The bitsandbytes codecs (``bnb8``, ``nf4``, ``fp4``), registered by :mod:`rws.patching.codecs`.

bitsandbytes is imported when a codec is used, not before.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rws.errors import CodecError, UsageError
from rws.patching.codec_types import Encoded, numel, part


class BnbFourBitCodec:
    """bitsandbytes 4-bit blockwise (``nf4`` or ``fp4``): the packed codes and one absmax per
    block. The rest of bitsandbytes' ``QuantState`` (its code map and a packed JSON of shape,
    dtype, block size) follows from the codec, the shape and ``blocksize``, so it is stored only
    when it differs from that (files before format 3 always store it, as ``::quant_map`` and
    ``::state``)."""

    blockwise = True

    def __init__(self, quant_type: str) -> None:
        self.name = self.quant_type = quant_type
        self._state_key = f"quant_state.bitsandbytes__{quant_type}"
        self.suffixes = ("q", "absmax", "quant_map", "state")

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        bnbf = _bitsandbytes()
        flat = x.reshape(-1).to(torch.float32).contiguous()
        try:
            q, state = bnbf.quantize_4bit(flat, blocksize=blocksize, quant_type=self.quant_type)
        except (ValueError, AssertionError, RuntimeError) as err:
            raise UsageError(f"tensor {name!r}: {self.name} cannot encode it ({err})") from None
        parts = state.as_dict(packed=True)
        stored = {"q": q.reshape(-1).contiguous(), "absmax": parts["absmax"].contiguous()}
        if not torch.equal(parts["quant_map"], bnbf.get_4bit_type(self.quant_type, "cpu")):
            stored["quant_map"] = parts["quant_map"].contiguous()
            stored["state"] = parts[self._state_key].contiguous()
        return Encoded(self.name, stored, {"blocksize": blocksize})

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        bnbf = _bitsandbytes()
        q = part(name, enc, "q")
        absmax = part(name, enc, "absmax")
        try:
            if "state" in enc.tensors or "quant_map" in enc.tensors:
                qs = {"absmax": absmax, "quant_map": part(name, enc, "quant_map"),
                      self._state_key: part(name, enc, "state")}  # fmt: skip
                state = bnbf.QuantState.from_dict(qs, device=torch.device("cpu"))
            else:
                bs, n = int(enc.params.get("blocksize", 0)), numel(shape)
                if bs <= 0 or absmax.numel() != -(-n // bs) or q.numel() != -(-n // 2):
                    raise CodecError(name, f"{self.name} data does not fit {n} values")
                state = bnbf.QuantState(
                    absmax=absmax, shape=torch.Size([n]), blocksize=bs, dtype=torch.float32,
                    code=bnbf.get_4bit_type(self.quant_type, "cpu"), quant_type=self.quant_type,
                )  # fmt: skip
            out = bnbf.dequantize_4bit(q.reshape(-1, 1), state)
        except CodecError:
            raise
        except Exception as err:  # bitsandbytes raises assorted types on malformed state
            raise CodecError(name, f"{self.name} data cannot be decoded ({err})") from None
        if out.numel() != numel(shape):
            raise CodecError(name, f"{self.name} data decodes to {out.numel()} values")
        return out.to(torch.float32).reshape(shape)


class BnbEightBitCodec:
    """bitsandbytes 8-bit blockwise with its dynamic (non-uniform) code map; the map (256 floats)
    is stored as ``::code`` only when it is not bitsandbytes' standard dynamic map."""

    suffixes = ("q", "absmax", "code")
    name = "bnb8"
    blockwise = True

    def encode(self, name: str, x: torch.Tensor, blocksize: int) -> Encoded:
        bnbf = _bitsandbytes()
        flat = x.reshape(-1).to(torch.float32).contiguous()
        q, state = bnbf.quantize_blockwise(flat, blocksize=blocksize)
        q = q.reshape(x.shape).contiguous()  # the tensor's shape: a reader takes it from the file
        stored = {"q": q, "absmax": state.absmax.contiguous()}
        if not torch.equal(state.code, _dynamic_map()):
            stored["code"] = state.code
        return Encoded(self.name, stored, {"blocksize": blocksize})

    def decode(self, name: str, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        bnbf = _bitsandbytes()
        q, absmax = part(name, enc, "q"), part(name, enc, "absmax")
        code = part(name, enc, "code") if "code" in enc.tensors else _dynamic_map()
        q, bs = q.reshape(-1), int(enc.params.get("blocksize", 0))
        if q.dtype != torch.uint8 or q.numel() != numel(shape) or bs <= 0:
            raise CodecError(name, "bnb8 data has the wrong dtype, size or no blocksize")
        if absmax.numel() != -(-q.numel() // bs) or code.numel() != 256:
            raise CodecError(
                name, f"bnb8 data holds {absmax.numel()} scales / {code.numel()} codes"
            )
        try:
            out = bnbf.dequantize_blockwise(q, absmax=absmax, code=code, blocksize=bs)
        except Exception as err:  # bitsandbytes raises assorted types on malformed input
            raise CodecError(name, f"bnb8 data cannot be decoded ({err})") from None
        return out.to(torch.float32).reshape(shape)


def _bitsandbytes() -> Any:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes.functional as bnbf

    return bnbf


def _dynamic_map() -> torch.Tensor:
    return _bitsandbytes().create_dynamic_map().to("cpu", torch.float32)
