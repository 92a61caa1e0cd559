"""Signature analysis: similarity matrices, corruption identification, signature libraries."""

from rws.analysis.signatures import Matrix, SignatureLibrary, identify, plot_similarity, similarity

__all__ = ["Matrix", "SignatureLibrary", "identify", "plot_similarity", "similarity"]
