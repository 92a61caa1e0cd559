"""Identification: which known corruption a new signature comes from (nearest centroid, or a
scikit-learn kNN / logistic classifier fitted on a signature library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from rws.analysis.library import SignatureLibrary
from rws.analysis.similarity import compared_tensors
from rws.errors import UnknownNameError, UsageError
from rws.patching.patch import Patch

IdentifyMethod = Literal["centroid", "knn", "logistic"]
IDENTIFY_METHODS = ("centroid", "knn", "logistic")
LOGISTIC_C = 100.0  # weak L2 penalty: unit-norm features, a handful of signatures per class


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
    running_stats: bool = False,
) -> Identification:
    """Predict which corruption ``patch`` is a signature of, from a labelled library.

    Features are the L2-normalised, flattened tensors that the patch and every library signature
    share, BatchNorm running statistics left out unless ``running_stats``
    (:func:`rws.analysis.similarity.compared_tensors`). ``centroid``: cosine similarity to each
    corruption's mean direction, confidence =
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
    names = compared_tensors([patch, *known], running_stats=running_stats)
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
