"""Signature analysis: similarity matrices, corruption identification, signature libraries."""

from rws.analysis.identify import Identification, identify
from rws.analysis.library import LibraryEntry, SignatureLibrary
from rws.analysis.plots import plot_layer_deltas, plot_similarity
from rws.analysis.similarity import (
    Matrix,
    SimilarityResult,
    compared_tensors,
    shared_tensors,
    similarity,
)

__all__ = [
    "Identification",
    "LibraryEntry",
    "Matrix",
    "SignatureLibrary",
    "SimilarityResult",
    "compared_tensors",
    "identify",
    "plot_layer_deltas",
    "plot_similarity",
    "shared_tensors",
    "similarity",
]
