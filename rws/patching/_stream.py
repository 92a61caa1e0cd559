"""The streamed file pipeline behind :func:`rws.patching.files.apply_file` and ``remove_file``.

Three threads overlap, plus the caller's. A :class:`Reader` fetches the input with positioned reads:
a patched tensor arrives in runs of ``RUN`` elements, each read into one of a few reused buffers and
hashed at once (the sha256 base fingerprint is taken of the very bytes read, while they are in
cache). A :class:`Patcher`, on one core, patches each run in place
(:func:`rws.patching.arith.patch_run`: decode, scale, add and cast per run, so no whole-tensor
float32 intermediate exists), and :class:`~rws.io.safetensors_write.StreamWriter` writes it from
its own thread into a temp file renamed into place on success (a folder input: the shards of a
folder of the same layout, :class:`~rws.io.folder_write.FolderWriter`). Tensors no patch touches
are copied by the kernel (``copy_file_range``). Meanwhile the caller's thread may compute the
applied stack (:func:`stream`'s ``final_stack``). What has no run-wise path (bitsandbytes codecs,
float64 or running-variance tensors, ``.pt`` inputs, removal) goes through whole tensors, at most
``AHEAD`` read ahead. Peak memory is a few runs plus a few tensors, not the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from rws.errors import CheckpointError, MissingTensorError, UnverifiedError
from rws.io.checkpoint import Checkpoint, SafetensorsCheckpoint, Source, open_checkpoint
from rws.io.folder_write import FolderWriter
from rws.io.hashing import tensor_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import StreamWriter
from rws.patching.arith import DecodeInto, patch_run
from rws.patching.codecs import range_decoder
from rws.patching.format import applied_metadata
from rws.patching.ops import (
    PatchReport,
    check_base,
    check_target,
    check_whole_base,
    group_by_tensor,
    non_finite,
    patch_tensor,
    require_fingerprints,
)
from rws.patching.patch import Patch
from rws.patching.undo import TensorUndo, Undo, lost

logger = logging.getLogger(__name__)

RUN = 1 << 18  # elements patched at once: the 1 MiB float32 scratch stays in L2
SLOTS = 16  # run buffers in flight between the reader, the caller and the writer
AHEAD = 2  # whole tensors read ahead
RUN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Parts = list[tuple[Patch, float]]


class Reader:
    """Reads the input ahead in a thread and yields, in storage order, one of:
    ``("copy", name, file)``: an untouched tensor, for the writer to copy from ``file``;
    ``("whole", name, tensor, sha256)``: a tensor read whole (``sha256`` None: not needed);
    ``("begin", name, decoders)``, then ``("run", start, slot, n)`` per run of ``n`` elements read
    into ``slot`` (release it with :meth:`release` once written), then ``("end", sha256)``;
    ``("error", exc)``: reading failed.
    """

    def __init__(
        self,
        ck: Checkpoint,
        files: dict[str, TensorFile],
        plan: dict[str, Parts],
        *,
        hashing: bool,
        runs: bool,
    ) -> None:
        self._ck, self._files, self._plan = ck, files, plan
        self._hashing, self._runs, self.undo = hashing, runs, False
        self._items: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._ahead = threading.Semaphore(AHEAD)
        self._stop = threading.Event()
        self._slots = 0
        self._thread = threading.Thread(target=self._run, name="rws-reader", daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join()

    def stop(self) -> None:
        """Stop reading: the iteration then ends after the items already queued."""
        self._stop.set()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while True:
            item = self._items.get()
            if item[0] == "done":
                return
            yield item
            if item[0] == "whole":
                self._ahead.release()

    def release(self, slot: torch.Tensor) -> None:
        """Hand a run buffer back for reuse (any thread)."""
        self._free.put(slot)

    def _wait(self, acquire: Any) -> Any:
        """Block on ``acquire(timeout=…)`` until it succeeds or the reader is stopped."""
        while not self._stop.is_set():
            with contextlib.suppress(queue.Empty):
                got = acquire(timeout=0.05)
                if got is not False:
                    return got
        raise Stopped

    def _slot(self) -> torch.Tensor:
        if self._stop.is_set():
            raise Stopped
        if self._free.empty() and self._slots < SLOTS:
            self._slots += 1
            return torch.empty(RUN * 4, dtype=torch.uint8)
        return self._wait(self._free.get)

    def _run(self) -> None:
        try:
            for file in {id(f): f for f in self._files.values()}.values():
                if hasattr(os, "posix_fadvise"):  # a longer read-ahead when not cached
                    os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for name in self._ck:
                self._tensor(name)
        except Stopped:
            pass
        except BaseException as err:  # raised again in the caller's thread
            self._items.put(("error", err))
        self._items.put(("done",))

    def _tensor(self, name: str) -> None:
        n, file, parts = name, self._files.get(name), self._plan.get(name)
        if parts is None and file is not None:
            self._items.put(("copy", name, file))
            return
        hashing = self._hashing and parts is not None  # undo: its base fingerprint, always
        hashing = hashing and (self.undo or any(p.tensors[n].base_sha256 for p, _ in parts or ()))
        decoders = self._decoders(name, parts) if parts and file and self._runs else None
        if decoders is None or file is None:
            self._wait(self._ahead.acquire)
            t = file.get(name) if file is not None else self._ck.get(name)
            self._items.put(("whole", name, t, tensor_sha256(t) if hashing else None))
            return
        dtype, numel = file.dtype(name), math.prod(file.shape(name))
        size = dtype.itemsize
        step = RUN - RUN % math.lcm(*(align for _, _, align in decoders))
        sha = hashlib.sha256() if hashing else None
        self._items.put(("begin", name, [(f, a) for f, a, _ in decoders]))
        for start in range(0, numel, step):
            n = min(step, numel - start)
            slot = self._slot()
            view = memoryview(slot.numpy())[: n * size]
            file.read_into(name, start * size, view)
            if sha is not None:
                sha.update(view)  # while the bytes are in cache (hashlib drops the GIL)
            self._items.put(("run", start, slot, n))
        self._items.put(("end", sha.hexdigest() if sha is not None else None))

    def _decoders(self, name: str, parts: Parts) -> list[tuple[DecodeInto, float, int]] | None:
        """Run-wise decoders of every part (reading the patch data), or None: whole tensor (also
        for a tensor in another dtype than a patch's base: its check may need the values)."""
        dtype = self._ck.dtype(name)
        if dtype not in RUN_DTYPES or name.endswith("running_var"):
            return None
        if any(p.tensors[name].dtype != str(dtype).removeprefix("torch.") for p, _ in parts):
            return None
        out = []
        for p, alpha in parts:
            td = p.tensors[name]
            dec = range_decoder(name, td.encoded, td.shape)
            if dec is None or dec.align > RUN:
                return None
            out.append((dec.decode_into, alpha, dec.align))
        return out if math.lcm(*(align for _, _, align in out)) <= RUN else None


class Stopped(Exception):
    """The reader was told to stop."""


def tensor_files(ck: Checkpoint) -> dict[str, TensorFile]:
    """Each tensor's safetensors file, opened for positioned reads (empty for other sources)."""
    if not isinstance(ck, SafetensorsCheckpoint):
        return {}
    files = {}
    for path in ck.files():
        tf = TensorFile(path)
        files.update({name: tf for name in tf})
    return files


class Patcher:
    """Consumes the reader's items: patches each tensor or run and hands it to the writer."""

    def __init__(
        self,
        where: str,
        plan: dict[str, Parts],
        spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        *,
        force: bool,
        clamp_var: bool,
        inverse: bool,
        undo: Undo | None = None,
        corrections: dict[str, TensorUndo] | None = None,
    ) -> None:
        self.where, self.plan, self.spec = where, plan, spec
        self.force, self.clamp_var, self.inverse = force, clamp_var, inverse
        self.report, self.corrections = PatchReport(undo=undo), corrections or {}
        self._name = ""
        self._decoders: list[tuple[DecodeInto, float]] = []
        self._lost: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run(self, reader: Reader, writer: StreamWriter | FolderWriter) -> None:
        """Patch everything the reader yields, on one core (see :func:`_one_core`)."""
        _one_core()
        self._acc = torch.empty(RUN)  # float32 scratch, reused by every run
        self._tmp = torch.empty(RUN) if any(len(p) > 1 for p in self.plan.values()) else None
        self._reader, self._writer = reader, writer
        for kind, *args in reader:
            getattr(self, f"_{kind}")(*args)

    def _run(self, start: int, slot: torch.Tensor, n: int) -> None:
        dtype = self.spec[self._name][0]
        w = slot[: n * dtype.itemsize].view(dtype)
        base = w.clone() if self.report.undo is not None else None
        if not patch_run(w, start, self._decoders, self._acc, self._tmp):
            non_finite(self._name, self.plan[self._name], dtype)
        if base is not None:  # what remove will compute, the same operations in the same order
            b = base.clone()
            patch_run(w, start, self._decoders, self._acc, self._tmp, out=b, inverse=True)
            self._lost.append(lost(base, b, start))
        self._writer.put(memoryview(slot.numpy())[: w.nbytes], lambda: self._reader.release(slot))

    def _begin(self, name: str, decoders: list[tuple[DecodeInto, float]]) -> None:
        self._name, self._decoders, self._lost = name, decoders, []
        self._writer.begin(name)

    def _end(self, sha256: str | None) -> None:
        name, (dtype, shape) = self._name, self.spec[self._name]
        if sha256 is None:
            self.report.unchecked.append(name)  # forced: no fingerprint recorded
        else:
            parts = self.plan[name]
            check_base(self.where, name, sha256, parts, self.report, self.force, dtype=dtype)
            if self.report.undo is not None:
                self.report.undo.add(name, self._lost, sha256, math.prod(shape))
        self.report.touched += 1

    def _copy(self, name: str, file: TensorFile) -> None:
        self._writer.begin(name)
        offset, size = file.span(name)
        if size:
            self._writer.copy_from(file.fileno(), offset, size, file.path)

    def _whole(self, name: str, t: torch.Tensor, sha256: str | None) -> None:
        if name in self.plan:
            t = patch_tensor(
                self.where,
                name,
                t,
                self.plan[name],
                self.report,
                force=self.force,
                clamp_var=self.clamp_var,
                inverse=self.inverse,
                fingerprint=lambda: sha256 or "",  # "": nothing to check
                undo=self.report.undo,
                correction=self.corrections.get(name),
            )
        self._writer.write(name, t)

    def _error(self, err: BaseException) -> None:
        raise err


def _one_core() -> None:
    """Run this thread's torch operations on one core, leaving the other to the reader and the
    writer: on a busy machine a parallel operation stalls whenever one of its threads is
    descheduled. OpenMP keeps the thread count per thread, so this does not touch the process-wide
    ``torch.get_num_threads()``. A no-op without a loaded OpenMP runtime."""
    from threadpoolctl import threadpool_limits

    torch.ones(1).add_(1)  # torch initialises the count per thread on first use: do that first
    threadpool_limits(limits=1, user_api="openmp")  # omp_set_num_threads(1) in every runtime


def stream(
    source: Source,
    items: Sequence[tuple[Patch, float]],
    output: str,
    stack: list[dict[str, Any]],
    *,
    force: bool,
    clamp_var: bool,
    inverse: bool,
    final_stack: Callable[[], list[dict[str, Any]]] | None = None,
    folder: str | None = None,
    undo: Undo | None = None,
    corrections: dict[str, TensorUndo] | None = None,
    strict: bool = False,
) -> tuple[PatchReport, list[dict[str, Any]]]:
    """Stream ``source`` through the patches into ``output``, recording ``stack``; or, with
    ``final_stack``, the stack it returns, computed while the tensors stream (its JSON must be no
    longer than that of ``stack``, which holds its place in the header meanwhile). With
    ``folder`` (the folder ``source`` was read from), ``output`` is a folder of the same layout.
    Applying, ``undo`` collects the exact-undo correction; removing, ``corrections`` are written
    back, and ``strict`` writes nothing unless every restored tensor is verified bit-exact."""
    ck = open_checkpoint(source)
    where = ck.path
    plan = group_by_tensor(items)
    for name, parts in plan.items():  # every cheap check before the first byte is written
        if name not in ck:
            raise MissingTensorError(name, where, "the patch was made for another model")
        check_target(where, name, parts, ck.shape(name), ck.dtype(name))
    if not inverse:
        require_fingerprints(where, plan, force)
    spec = {n: (ck.dtype(n), ck.shape(n)) for n in ck}
    patcher = Patcher(where, plan, spec, force=force, clamp_var=clamp_var, inverse=inverse,
                      undo=undo, corrections=corrections)  # fmt: skip
    files = tensor_files(ck)
    writer: StreamWriter | FolderWriter
    try:
        if folder is None:
            base_meta = {"format": "pt", **ck.metadata}
            writer = StreamWriter(output, spec, applied_metadata(base_meta, stack))
        else:
            layout, shard_meta = folder_layout(ck, folder, files)
            metas = {s: applied_metadata(m, stack) for s, m in shard_meta.items()}
            writer = FolderWriter(output, folder, layout, spec, metas, final=final_stack is None)
        reader = Reader(ck, files, plan, hashing=not inverse, runs=not inverse)
        reader.undo = undo is not None
        with reader, writer, ThreadPoolExecutor(1, thread_name_prefix="rws-patch") as pool:
            done = pool.submit(patcher.run, reader, writer)
            try:
                if final_stack is not None:
                    stack = final_stack()
                    if isinstance(writer, FolderWriter):
                        writer.set_metadata(
                            {s: applied_metadata(m, stack) for s, m in shard_meta.items()}
                        )
                    else:
                        writer.set_metadata(applied_metadata(base_meta, stack))
                done.result()
                if not inverse:  # before the output is renamed in
                    check_whole_base(where, (p for p, _ in items), patcher.report, force)
                if strict and patcher.report.unverified:  # before the output is renamed in
                    raise UnverifiedError(where, patcher.report.unverified)
            except BaseException:
                reader.stop()  # the patcher runs out of items and returns
                raise
    finally:
        for file in {id(f): f for f in files.values()}.values():
            file.close()
        ck.close()
    report = patcher.report
    for name in report.mismatched:
        msg = f"{where}: tensor {name!r} differs from the patch's base fingerprint"
        report.warnings.append(msg)
        logger.warning(msg)
    return report, stack


def folder_layout(
    ck: Checkpoint, folder: str, files: dict[str, TensorFile]
) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, str]]]:
    """Each tensor's shard (relative to ``folder``) and the name stored there, and each shard's
    metadata (``files``: :func:`tensor_files`, by stored name)."""
    if not isinstance(ck, SafetensorsCheckpoint):
        raise CheckpointError(folder, "not a safetensors checkpoint folder")
    layout, meta = {}, {}
    for name in ck:
        stored = ck.stored_name(name)
        tf = files[stored]
        shard = os.path.relpath(tf.path, folder)
        layout[name] = (shard, stored)
        meta.setdefault(shard, {"format": "pt", **tf.metadata})
    return layout, meta
