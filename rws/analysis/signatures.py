"""Signature analysis: cosine similarity (overall and per layer), a signature library, and
identification of the corruption a new signature comes from (nearest centroid or scikit-learn).

Signatures are compared on the tensors they all share, flattened and concatenated, with each
patch's ``scale`` applied (a negated patch points the other way). Matrices are plain nested
tuples of floats, so results serialise to JSON as they are.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from rws.errors import (
    FormatVersionError,
    InputFileError,
    IntegrityError,
    MalformedInputError,
    PatchFormatError,
    UnknownNameError,
    UsageError,
)
from rws.patching.patch import Patch
from rws.patching.patch import load as load_patch
from rws.patching.selection import group_layers

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Matrix = tuple[tuple[float, ...], ...]
IdentifyMethod = Literal["centroid", "knn", "logistic"]
IDENTIFY_METHODS = ("centroid", "knn", "logistic")
INDEX_FILE = "index.json"
LOGISTIC_C = 100.0  # weak L2 penalty: unit-norm features, a handful of signatures per class


# --- shared tensors -----------------------------------------------------------------------------


def shared_tensors(patches: Sequence[Patch]) -> list[str]:
    """Tensor names every patch holds, in the first patch's (depth) order.

    Raises:
        IntegrityError: the patches share no tensor, or a shared tensor's shapes differ.
    """
    first = patches[0]
    names = first.names()
    for p in patches[1:]:
        kept = [n for n in names if n in p.tensors]
        if not kept:
            example = f" (e.g. {names[0]!r})" if names else ""
            raise IntegrityError(
                f"signature {p.label} shares no tensor with {first.label}{example}; "
                "extract signatures with the same layer selection (--shallow K)"
            )
        for n in kept:
            if p.tensors[n].shape != first.tensors[n].shape:
                raise IntegrityError(
                    f"tensor {n!r}: {first.label} has shape {list(first.tensors[n].shape)} but "
                    f"{p.label} has {list(p.tensors[n].shape)}; signatures of different "
                    "architectures cannot be compared"
                )
        names = kept
    return names


def _gram(patches: Sequence[Patch], name: str) -> np.ndarray:
    x = torch.stack([p.delta(name).flatten().to(torch.float64) for p in patches])  # (P, numel)
    return (x @ x.T).numpy()


def _cosine(gram: np.ndarray) -> Matrix:
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    denom = np.outer(norms, norms)
    cos = np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)
    return tuple(tuple(float(v) for v in row) for row in np.clip(cos, -1.0, 1.0))


# --- similarity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimilarityResult:
    """Cosine similarities between signatures.

    Attributes:
        labels: one label per patch (``patch.label``), the order of every matrix's rows.
        tensors: the shared tensors compared, in depth order.
        overall: cosine similarity of the concatenated shared tensors.
        layers: per layer (depth order), the cosine similarity of that layer's tensors; empty
            unless ``per_layer``.
    """

    labels: tuple[str, ...]
    tensors: tuple[str, ...]
    overall: Matrix
    layers: dict[str, Matrix] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "labels": list(self.labels),
            "tensors": list(self.tensors),
            "overall": [list(r) for r in self.overall],
            "layers": {k: [list(r) for r in m] for k, m in self.layers.items()},
        }


def similarity(patches: Sequence[Patch], *, per_layer: bool = True) -> SimilarityResult:
    """Cosine-similarity matrices of signatures, overall and per layer.

    Args:
        patches: two or more patches (e.g. RWS signatures of one clean model).
        per_layer: also compute one matrix per layer (``rws.select.group_layers``).

    Returns:
        The matrices, rows and columns in the order of ``patches``.

    Raises:
        UsageError: fewer than two patches.
        IntegrityError: the patches share no tensor, or a shared tensor's shapes differ.

    Example:
        >>> fogs = [rws.load("fog-1.rws.safetensors"), rws.load("fog-2.rws.safetensors")]  # doctest: +SKIP
        >>> res = similarity(fogs)  # doctest: +SKIP
        >>> res.overall[0][1]  # doctest: +SKIP
        0.95
    """
    patches = list(patches)
    if len(patches) < 2:
        raise UsageError("similarity needs at least two patches")
    names = shared_tensors(patches)
    grams = {n: _gram(patches, n) for n in names}
    layers: dict[str, Matrix] = {}
    if per_layer:
        for layer in group_layers(names, lambda n: patches[0].tensors[n].shape):
            layers[layer.name] = _cosine(sum(grams[n] for n in layer.tensors))
    return SimilarityResult(
        labels=tuple(p.label for p in patches),
        tensors=tuple(names),
        overall=_cosine(sum(grams.values())),
        layers=layers,
    )


def plot_similarity(result: SimilarityResult) -> Figure:
    """Heatmaps of ``result``: overall, then one panel per layer."""
    from rws.io.figures import new_figure

    panels = [(f"overall ({len(result.tensors)} tensors)", result.overall)]
    panels += list(result.layers.items())
    n = len(result.labels)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    side = max(3.2, 0.45 * n + 1.6)
    fig = new_figure(side * cols, side * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax, (title, matrix) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(np.array(matrix), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(result.labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticklabels(result.labels, fontsize=7)
        if n <= 10:
            for i in range(n):
                for j in range(n):
                    v = matrix[i][j]
                    color = "white" if abs(v) > 0.6 else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=color)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    return fig


# --- library ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryEntry:
    """One known signature: the patch and the corruption it was made for."""

    patch: Patch
    corruption: str
    seed: int | None = None
    dataset: str | None = None
    arch: str | None = None

    @property
    def label(self) -> str:
        return self.patch.label


def _corruption_of(patch: Patch) -> str | None:
    value = patch.tags.get("corruption") or patch.provenance.get("corruption")
    return str(value) if value else None


@dataclass(frozen=True)
class SignatureLibrary:
    """Known signatures labelled by corruption (see :meth:`from_folder`)."""

    entries: tuple[LibraryEntry, ...]
    root: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def corruptions(self) -> list[str]:
        """The distinct corruptions, sorted."""
        return sorted({e.corruption for e in self.entries})

    def without(self, patch: Patch) -> SignatureLibrary:
        """The library minus every entry with ``patch``'s content (leave-one-out evaluation)."""
        fp = patch.fingerprint()
        kept = tuple(e for e in self.entries if e.patch.fingerprint() != fp)
        return SignatureLibrary(kept, root=self.root)

    @classmethod
    def from_patches(
        cls, patches: Sequence[Patch], corruptions: Sequence[str] | None = None
    ) -> SignatureLibrary:
        """A library from patches, labelled by ``corruptions`` or by each ``tags["corruption"]``.

        Raises:
            UsageError: a patch has no corruption label, or the lengths differ.
        """
        if corruptions is not None and len(corruptions) != len(patches):
            raise UsageError(f"{len(patches)} patches but {len(corruptions)} corruption labels")
        entries = []
        for i, p in enumerate(patches):
            c = corruptions[i] if corruptions is not None else _corruption_of(p)
            if not c:
                raise UsageError(f"signature {p.label} has no 'corruption' tag; label it")
            entries.append(LibraryEntry(p, c))
        return cls(tuple(entries))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> SignatureLibrary:
        """Read a library folder.

        With an ``index.json`` (``{"signatures": [{"file", "corruption", "seed", "dataset",
        "arch"}, …]}``) the listed files; without one, every ``*.safetensors`` patch in the
        folder that has a ``corruption`` tag (other files, such as checkpoints, are passed over).

        Raises:
            InputFileError: the folder or a listed file does not exist.
            MalformedInputError: ``index.json`` is not valid.
            PatchFormatError: a listed file is not a patch.
            UsageError: the folder holds no labelled signature.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InputFileError(root, "no such folder" if not root.exists() else "not a folder")
        index = root / INDEX_FILE
        entries = _read_index(index) if index.is_file() else _scan(root)
        if not entries:
            raise UsageError(
                f"{root}: no signatures (no {INDEX_FILE} and no *.safetensors patch tagged "
                "with a corruption)"
            )
        return cls(tuple(entries), root=os.fspath(root))


def _read_index(index: Path) -> list[LibraryEntry]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedInputError(index, f"not valid JSON ({type(e).__name__})") from None
    items = data.get("signatures") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise MalformedInputError(index, 'expected {"signatures": [{"file", "corruption"…}]}')
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise MalformedInputError(index, f"signatures[{i}] has no 'file' string")
        patch = load_patch(index.parent / item["file"])
        corruption = item.get("corruption") or _corruption_of(patch)
        if not corruption:
            raise MalformedInputError(index, f"signatures[{i}] ({item['file']}) has no corruption")
        seed = item.get("seed")
        entries.append(
            LibraryEntry(
                patch,
                str(corruption),
                seed=int(seed) if isinstance(seed, int | float) else None,
                dataset=item.get("dataset"),
                arch=item.get("arch"),
            )
        )
    return entries


def _scan(root: Path) -> list[LibraryEntry]:
    entries = []
    for path in sorted(root.glob("*.safetensors")):
        try:
            patch = load_patch(path)
        except FormatVersionError:
            raise
        except PatchFormatError:
            logger.debug("%s: not a patch, passed over", path)
            continue
        corruption = _corruption_of(patch)
        if corruption is None:
            logger.warning("%s: no 'corruption' tag, left out of the library", path)
            continue
        prov = patch.provenance
        seed = patch.tags.get("seed")
        entries.append(
            LibraryEntry(
                patch,
                corruption,
                seed=int(seed) if seed and str(seed).lstrip("-").isdigit() else None,
                dataset=patch.tags.get("dataset") or prov.get("dataset"),
                arch=patch.tags.get("arch") or prov.get("arch"),
            )
        )
    return entries


# --- identification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identification:
    """Which known corruption a signature is closest to.

    Attributes:
        corruption: the predicted corruption.
        confidence: its probability under ``method``.
        method: ``centroid``, ``knn`` or ``logistic``.
        ranking: every corruption with its probability, most likely first.
        similarities: cosine similarity to each corruption's centroid (whatever the method).
        nearest: the most similar library signature's label and its cosine similarity.
        tensors: how many shared tensors were compared.
    """

    corruption: str
    confidence: float
    method: str
    ranking: tuple[tuple[str, float], ...]
    similarities: dict[str, float]
    nearest: tuple[str, float]
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "corruption": self.corruption,
            "confidence": self.confidence,
            "method": self.method,
            "ranking": [{"corruption": c, "probability": p} for c, p in self.ranking],
            "similarities": dict(self.similarities),
            "nearest": {"label": self.nearest[0], "cosine": self.nearest[1]},
            "tensors": self.tensors,
        }


def _features(patches: Sequence[Patch], names: Sequence[str]) -> np.ndarray:
    """L2-normalised flattened shared tensors, one row per patch: (P, Σ numel)."""
    rows = []
    for p in patches:
        v = torch.cat([p.delta(n).flatten().to(torch.float64) for n in names]).numpy()
        norm = float(np.linalg.norm(v))
        rows.append(v / norm if norm > 0 else v)
    return np.stack(rows)


def identify(
    patch: Patch,
    library: SignatureLibrary,
    *,
    method: IdentifyMethod = "centroid",
    neighbors: int = 3,
    temperature: float = 0.1,
) -> Identification:
    """Predict which corruption ``patch`` is a signature of, from a labelled library.

    Features are the L2-normalised, flattened tensors that the patch and every library signature
    share. ``centroid``: cosine similarity to each corruption's mean direction, confidence =
    softmax(cosine / ``temperature``). ``knn``: scikit-learn ``KNeighborsClassifier``
    (``neighbors``, distance-weighted; on unit vectors Euclidean order is cosine order).
    ``logistic``: scikit-learn ``LogisticRegression`` (``C = 100``, balanced class weights: with
    unit-norm features and a few signatures per class, the default ``C = 1`` predicts little more
    than the class priors). Both report ``predict_proba``.

    Raises:
        UsageError: an empty library, an unknown method, or a bad ``neighbors``/``temperature``.
        IntegrityError: the patch and the library share no tensor, or shapes differ.

    Example:
        >>> lib = SignatureLibrary.from_folder("signatures")  # doctest: +SKIP
        >>> identify(rws.load("new.rws.safetensors"), lib).corruption  # doctest: +SKIP
        'fog'
    """
    if method not in IDENTIFY_METHODS:
        raise UnknownNameError("identification method", method, list(IDENTIFY_METHODS))
    if len(library) == 0:
        raise UsageError("the signature library is empty; add labelled signatures")
    if neighbors < 1:
        raise UsageError(f"neighbors {neighbors}: must be at least 1")
    if not temperature > 0:
        raise UsageError(f"temperature {temperature}: must be positive")
    known = [e.patch for e in library.entries]
    names = shared_tensors([patch, *known])
    x = _features([patch, *known], names)
    query, lib_x = x[0], x[1:]
    labels = np.array([e.corruption for e in library.entries])
    classes = sorted(set(labels.tolist()))

    centroids = np.stack([lib_x[labels == c].mean(0) for c in classes])
    c_norm = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = np.divide(centroids, c_norm, out=np.zeros_like(centroids), where=c_norm > 0)
    cos = centroids @ query  # (C,)
    sims = lib_x @ query  # (N,)
    best = int(np.argmax(sims))

    if method == "centroid" or len(classes) == 1:
        z = cos / temperature
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        order = classes
    else:
        prob, order = _sklearn_proba(method, lib_x, labels, query, neighbors)

    ranking = sorted(zip(order, (float(p) for p in prob), strict=True), key=lambda t: (-t[1], t[0]))
    return Identification(
        corruption=ranking[0][0],
        confidence=ranking[0][1],
        method=method,
        ranking=tuple(ranking),
        similarities={c: float(v) for c, v in zip(classes, cos, strict=True)},
        nearest=(library.entries[best].label, float(sims[best])),
        tensors=len(names),
    )


def _sklearn_proba(
    method: str, lib_x: np.ndarray, labels: np.ndarray, query: np.ndarray, neighbors: int
) -> tuple[np.ndarray, list[str]]:
    """``predict_proba`` of a kNN or logistic classifier fitted on the library rows."""
    from threadpoolctl import threadpool_limits

    # A few rows of many columns: BLAS threads only contend (50-100× slower on a busy machine).
    with threadpool_limits(limits=1):
        if method == "knn":
            from sklearn.neighbors import KNeighborsClassifier

            k = min(neighbors, len(labels))
            clf: Any = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(lib_x, labels)
            return clf.predict_proba(query[None])[0], [str(c) for c in clf.classes_]
        from sklearn.linear_model import LogisticRegression

        # An L2-penalised linear model's weights lie in the span of the training rows, so fitting
        # on coordinates in an orthonormal basis of that span is exact and N×N instead of N×D.
        _, _, vt = np.linalg.svd(lib_x, full_matrices=False)  # (r, D)
        clf = LogisticRegression(C=LOGISTIC_C, class_weight="balanced", max_iter=5000)
        clf.fit(lib_x @ vt.T, labels)
        return clf.predict_proba((query @ vt.T)[None])[0], [str(c) for c in clf.classes_]
