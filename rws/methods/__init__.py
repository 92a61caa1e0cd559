"""Ways of making a delta, one module each, registered in :data:`METHODS`: checkpoints in,
deltas out (no training, no evaluation; pipelines live in :mod:`rws.recipes`)."""

from rws.methods import delta, interpolation, rws  # noqa: F401  (registers the built-in methods)
from rws.methods.interpolation import InterpolationOptions
from rws.methods.registry import (
    METHODS,
    Method,
    NoOptions,
    get_method,
    list_methods,
    method_options,
    register_method,
)
from rws.methods.rws import RwsOptions

__all__ = [
    "METHODS",
    "InterpolationOptions",
    "Method",
    "NoOptions",
    "RwsOptions",
    "get_method",
    "list_methods",
    "method_options",
    "register_method",
]
