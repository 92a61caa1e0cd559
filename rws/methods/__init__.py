"""Ways of making a delta, one module each, registered in :data:`METHODS`."""

from rws.methods import delta, interpolation, rws  # noqa: F401  (registers the built-in methods)
from rws.methods.registry import METHODS, Method, list_methods, register_method

__all__ = ["METHODS", "Method", "list_methods", "register_method"]
