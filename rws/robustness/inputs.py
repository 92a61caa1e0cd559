"""Corrupted inputs: the one builder behind evaluation, training's validation and the α search.

A *cell* is one (corruption, severity). Images are corrupted in global batches of ``batch_size``:

- :func:`corrupt_cell` builds a cell as ``rws eval`` feeds it: batch ``b`` corrupted with a
  generator seeded ``derived_seed(seed, corruption, severity, b)`` and truncated to uint8 (as
  CIFAR-10-C was), so any batch, or any rank's shard of batches, can be built on its own.
- :func:`corrupted_inputs` builds one fixed corrupted copy of a split, example ``j`` in the
  ``j``-th cell in turn (every cell represented evenly). ``draws="eval"`` (the default, used by the
  α search) gives example ``j`` the very image ``rws eval`` feeds for that example in its cell, so
  α is chosen on the inputs the evaluation then measures; ``draws="train"`` keeps fine-tuning's
  validation draws (one generator, ``derived_seed(seed, "val")``, through the cells in turn),
  unchanged so that training runs and the shipped signatures reproduce bit for bit.
- :func:`random_corruption` corrupts a training batch with one (corruption, severity) drawn from
  the training generator.
- :class:`EvalInputs` holds an evaluation's clean images and its cached cells (kernels or released
  CIFAR-10-C arrays) with the sha256 of every batch. On a GPU it builds them in a background thread
  on its own CUDA stream while the forwards run (:meth:`EvalInputs.build`, ``background=True``):
  the cells come out in a fixed order, each cell's images released to the readers once all of its
  batches are built; the images are the ones a synchronous build makes.

Random draws happen on the generator's device. ``generator="device"`` (the default) seeds a
generator on the device the kernels run on (a CUDA generator on a GPU: the draws are made there);
``"cpu"`` seeds a CPU generator whatever the device (the same images on every device).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rws.data import load_cifar_c
from rws.data.severity import severity_range
from rws.errors import MalformedInputError, UsageError
from rws.io.hashing import tensor_sha256
from rws.robustness import distributed as dist
from rws.robustness.corruptions import corrupt, get_corruption
from rws.runtime.checks import check_positive
from rws.runtime.device import pinned
from rws.runtime.seed import GeneratorPlace, derived_seed, generator, generator_device

Params = Literal["auto", "cifar", "imagenet", "imagecorruptions"]
_PIN_LIMIT = 4 << 30  # clean images up to 4 GiB are pinned on a GPU run
Cell = tuple[str, int]

__all__ = [
    "EvalInputs",
    "cell_seed",
    "corrupt_cell",
    "corrupted_inputs",
    "quantize",
    "random_corruption",
]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8 by truncation, as the reference's ``np.uint8``; the 1e-3 keeps values
    already on the uint8 grid where they are despite float rounding."""
    return (x.clamp(0.0, 1.0) * 255.0 + 1e-3).floor_().to(torch.uint8)


def cell_seed(seed: int, corruption: str, severity: int, batch: int) -> int:
    """The seed of global batch ``batch`` of a cell in an evaluation rooted at ``seed``."""
    return derived_seed(seed, corruption, severity, batch)


def _cell_batch(
    x: torch.Tensor, cell: Cell, b: int, *, seed: int, batch_size: int, params: Params,
    device: torch.device | None, place: GeneratorPlace = "device",
) -> torch.Tensor:  # fmt: skip
    """Global batch ``b`` of ``x`` in ``cell``, uint8 on the device the kernels ran on."""
    xb = x[b * batch_size : (b + 1) * batch_size]
    xb = xb if device is None else xb.to(device, non_blocking=xb.is_pinned())
    g = generator(cell_seed(seed, *cell, b), generator_device(place, xb.device))
    return quantize(corrupt(xb, *cell, params=params, generator=g))


def corrupt_cell(
    x: torch.Tensor,
    corruption: str,
    severity: int,
    *,
    seed: int,
    batch_size: int = 256,
    batches: Iterable[int] | None = None,
    params: Params = "auto",
    device: torch.device | str | None = None,
    advance: Callable[[int], None] | None = None,
    generator: GeneratorPlace = "device",
    pin: bool = False,
) -> torch.Tensor:
    """The (corruption, severity) cell of ``x`` exactly as ``rws eval`` feeds it.

    Args:
        x: clean images ``(N, 3, H, W)`` in [0, 1].
        corruption, severity: the cell.
        seed: the evaluation's seed.
        batch_size: images per global batch (each batch has its own seed).
        batches: the global batch indices to build (all when None), e.g. one rank's shard.
        params: the severity table (``"auto"`` picks by image size).
        device: where the kernels run (``x``'s device when None).
        advance: called with 1 after each batch (a progress bar).
        generator: ``"device"``: each batch's generator lives where the kernels run (CUDA
            draws on a GPU); ``"cpu"``: a CPU generator (the same images on any device).
        pin: return the images in pinned host memory (for non-blocking copies to a GPU; needs
            CUDA).

    Returns:
        uint8 images of those batches, concatenated, on the CPU.

    Example:
        >>> q = corrupt_cell(torch.rand(5, 3, 32, 32), "fog", 3, seed=0, batch_size=2)
        >>> q.dtype, tuple(q.shape)
        (torch.uint8, (5, 3, 32, 32))
    """
    dev = torch.device(device) if isinstance(device, str) else device
    todo = list(range(-(-len(x) // batch_size)) if batches is None else batches)
    rows = [max(0, min((b + 1) * batch_size, len(x)) - b * batch_size) for b in todo]
    out = torch.empty((sum(rows), *x.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    at = 0
    for b, k in zip(todo, rows, strict=True):
        q = _cell_batch(x, (corruption, severity), b, seed=seed, batch_size=batch_size,
                        params=params, device=dev, place=generator)  # fmt: skip
        out[at : at + k].copy_(q)  # from a GPU: waits for the current stream only
        at += k
        if advance is not None:
            advance(1)
    return out


def corrupted_inputs(
    x: torch.Tensor,
    corruptions: Sequence[str],
    severity: int | tuple[int, int],
    *,
    seed: int,
    batch_size: int = 256,
    draws: Literal["eval", "train"] = "eval",
    params: Params = "auto",
    generator: GeneratorPlace = "device",
) -> torch.Tensor:
    """A fixed corrupted copy of ``x``: example ``j`` in the ``j``-th (corruption, severity) cell in
    turn, so that every cell is represented evenly; the same for a seed.

    Args:
        x: clean images ``(N, 3, H, W)`` in [0, 1].
        corruptions: names, crossed with every severity of ``severity``.
        severity: a severity or an inclusive range ``(lo, hi)``.
        seed: the root seed.
        batch_size: ``"eval"``: the evaluation's batch size (the images depend on it);
            ``"train"``: the chunk size of the validation draws.
        draws: ``"eval"``: each image is the one :func:`corrupt_cell` (``rws eval`` with the same
            seed and batch size) gives that example in its cell, dequantised (``/255``);
            ``"train"``: fine-tuning's validation copy (float, one generator).
        params: the severity table (``"eval"`` only; training uses ``"auto"``).
        generator: where ``"eval"`` draws are made (:func:`corrupt_cell`); ``x``'s device here.

    Returns:
        A float tensor shaped like ``x`` (``x`` itself when there is nothing to corrupt).

    Raises:
        UnknownNameError: an unknown corruption. UsageError: a bad severity or batch size.
    """
    names = [corruptions] if isinstance(corruptions, str) else list(corruptions)
    for name in names:
        get_corruption(name)
    lo, hi = severity_range(severity)
    check_positive("batch_size", batch_size)
    if draws not in ("eval", "train"):
        raise UsageError(f"draws must be 'eval' or 'train', got {draws!r}")
    if not names or len(x) == 0:
        return x
    cells = [(c, s) for c in names for s in range(lo, hi + 1)]
    if draws == "train":
        return _training_copy(x, cells, seed=seed, batch_size=batch_size)
    out = x.clone()
    for k, cell in enumerate(cells):
        idx = torch.arange(k, len(x), len(cells))  # this cell's examples
        for b in torch.unique(idx // batch_size).tolist():
            mine = idx[idx // batch_size == b]
            q = _cell_batch(x, cell, b, seed=seed, batch_size=batch_size, params=params,
                            device=None, place=generator)  # fmt: skip
            out[mine] = q[mine - b * batch_size].to(out.device, out.dtype).div_(255.0)
    return out


def _training_copy(
    x: torch.Tensor, cells: list[Cell], *, seed: int, batch_size: int
) -> torch.Tensor:
    """Fine-tuning's validation draws: one generator through the cells in turn (bit-stable)."""
    g = generator(derived_seed(seed, "val"))
    out = x.clone()
    for k, (name, sev) in enumerate(cells):
        idx = torch.arange(k, len(x), len(cells))
        for a in range(0, len(idx), batch_size):
            chunk = idx[a : a + batch_size]
            out[chunk] = corrupt(x[chunk], name, sev, generator=g)
    return out


def random_corruption(
    x: torch.Tensor,
    corruptions: Sequence[str],
    severity: tuple[int, int],
    generator: torch.Generator,
) -> torch.Tensor:
    """``x`` corrupted by one of ``corruptions`` at a severity in ``severity`` (inclusive), both
    drawn from ``generator``, which also feeds the kernel (training's per-batch augmentation)."""
    name = corruptions[_draw(generator, 0, len(corruptions) - 1)]
    return corrupt(x, name, _draw(generator, *severity), generator=generator)


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] from ``g`` (nothing drawn when the range has one value)."""
    if high == low:
        return low
    return int(torch.randint(low, high + 1, (1,), generator=g, device=g.device))


@dataclass
class EvalInputs:
    """An evaluation's inputs: clean images, global batches, this rank's share, cached cells.

    Attributes:
        x: ``(n, 3, H, W)`` float32 clean images on the CPU.
        y: ``(n,)`` int64 labels.
        batch_size: images per global batch.
        batches: global batches ``[(start, stop), …]``.
        local: this rank's batch indices (contiguous).
        cells: the (corruption, severity) cells.
        cache: cell → uint8 images of this rank's batches (filled by :meth:`build`).
        digests: ``"clean#b"`` / ``"name/severity#b"`` → sha256 of what batch ``b`` holds.
        generator_device: where the kernels' draws were made (``"cpu"``, ``"cuda"``); None for
            released arrays or before :meth:`build`.
    """

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    batches: list[tuple[int, int]]
    local: range
    cells: list[Cell]
    cache: dict[Cell, torch.Tensor] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    generator_device: str | None = None
    _ready: dict[Cell, threading.Event] = field(default_factory=dict, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_this_rank(
        cls, x: torch.Tensor, y: torch.Tensor, cells: list[Cell], *, batch_size: int
    ) -> EvalInputs:
        """Inputs cut into global batches, this rank (of ``torch.distributed``) taking its shard."""
        rank, world = dist.rank_and_world()
        batches = dist.batch_ranges(len(x), batch_size)
        return cls(x.float().contiguous(), y.long(), batch_size, batches,
                   dist.shard(len(batches), rank, world), cells)  # fmt: skip

    @property
    def offset(self) -> int:
        """Index of this rank's first example."""
        return self.batches[self.local.start][0] if len(self.local) else 0

    def clean(self, b: int) -> torch.Tensor:
        """Clean images of global batch ``b``."""
        a, z = self.batches[b]
        return self.x[a:z]

    def corrupted(self, cell: Cell, b: int) -> torch.Tensor:
        """uint8 images of global batch ``b`` (one of this rank's) in ``cell``; during a
        background build, waits until the cell is built.

        Raises:
            Whatever the background build raised.
        """
        ready = self._ready.get(cell)
        if ready is not None and not ready.is_set():
            ready.wait()
        if cell not in self.cache and self._error is not None:
            raise self._error
        return self._batch(cell, b)

    def images(self, cell: Cell | None, batches: range) -> torch.Tensor:
        """Images of consecutive global batches (this rank's), as one view without a copy: clean
        floats (``cell`` None) or the cell's uint8 images (waiting for the cell, as
        :meth:`corrupted`)."""
        a, z = self.batches[batches[0]][0], self.batches[batches[-1]][1]
        if cell is None:
            return self.x[a:z]
        self.corrupted(cell, batches[0])
        return self.cache[cell][a - self.offset : z - self.offset]

    def _batch(self, cell: Cell, b: int) -> torch.Tensor:
        a, z = self.batches[b]
        return self.cache[cell][a - self.offset : z - self.offset]

    def build(
        self, *, seed: int, params: Params, source: str | os.PathLike | None,
        device: torch.device, advance: Callable[[int], None], generator: GeneratorPlace = "device",
        background: bool = False,
    ) -> None:  # fmt: skip
        """Fill :attr:`cache` and :attr:`digests`: cells by the kernels (:func:`corrupt_cell`, the
        draws on ``generator``'s device) or, with ``source``, from released CIFAR-10-C arrays.

        With ``background``, the cells are built in a thread (on its own CUDA stream on a GPU)
        and this returns at once: :meth:`corrupted` waits for its cell, :meth:`wait` for all. On a
        GPU the images sit in pinned host memory, so copies to the device do not block.

        Raises:
            MalformedInputError: the arrays' labels differ. UsageError: their image size differs.
            (From :meth:`wait` or :meth:`corrupted` when built in the background.)
        """
        if self.x.numel() * self.x.element_size() <= _PIN_LIMIT:
            self.x = pinned(self.x, device)
        for b in self.local:
            self.digests[f"clean#{b}"] = tensor_sha256(self.clean(b))
        if source is None:
            self.generator_device = generator_device(generator, device).type
        args = (seed, params, source, device, advance, generator)
        if not background:
            self._produce(*args)
            return
        self._ready = {cell: threading.Event() for cell in self.cells}
        self._thread = threading.Thread(target=self._produce_guarded, args=args, daemon=True,
                                        name="rws-corruptions")  # fmt: skip
        self._thread.start()

    def wait(self) -> None:
        """Wait for a background :meth:`build` to finish.

        Raises:
            Whatever the background build raised.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def _produce_guarded(self, *args: object) -> None:
        try:
            self._produce(*args)  # type: ignore[arg-type]
        except BaseException as e:  # handed to the readers (corrupted, wait)
            self._error = e
        finally:
            for ready in self._ready.values():
                ready.set()

    def _produce(
        self, seed: int, params: Params, source: str | os.PathLike | None, device: torch.device,
        advance: Callable[[int], None], place: GeneratorPlace,
    ) -> None:  # fmt: skip
        cuda = device.type == "cuda"
        stream = torch.cuda.Stream(device) if cuda else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for c, s in self.cells:
                if source is not None:
                    self.cache[(c, s)] = pinned(self._released((c, s), os.fspath(source)), device)
                    advance(len(self.local))
                else:
                    self.cache[(c, s)] = corrupt_cell(
                        self.x, c, s, seed=seed, batch_size=self.batch_size, batches=self.local,
                        params=params, device=device, advance=advance, generator=place, pin=cuda,
                    )  # fmt: skip
                for b in self.local:
                    self.digests[f"{c}/{s}#{b}"] = tensor_sha256(self._batch((c, s), b))
                if (c, s) in self._ready:
                    self._ready[(c, s)].set()

    def _released(self, cell: Cell, source: str) -> torch.Tensor:
        n = self.x.shape[0]
        split = load_cifar_c(source, *cell)
        if split.y.shape[0] < n or not torch.equal(split.y[:n], self.y):
            raise MalformedInputError(
                Path(source) / "labels.npy", "labels differ from the clean test set's"
            )
        if split.x.shape[1:] != self.x.shape[1:]:
            raise UsageError(
                f"{source}: {cell[0]} images are {tuple(split.x.shape[1:])}, the clean test images "
                f"{tuple(self.x.shape[1:])}"
            )
        hi = self.batches[self.local[-1]][1] if len(self.local) else self.offset
        return (split.x[self.offset : hi] * 255.0).round_().to(torch.uint8)
