"""Datasets: the built-in digits; more sources resolve through :func:`load_dataset`."""

from rws.data.digits import ImageDataset, Split, load_digits

__all__ = ["ImageDataset", "Split", "load_digits"]
