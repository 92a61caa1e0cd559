"""rws: weight-space robustness patching (Robust Weight Signatures, RiFT) as patch files."""

__version__ = "0.1.0"

from rws.codecs import list_codecs
from rws.errors import RwsError
from rws.extract import extract, layer_deltas
from rws.fileops import apply_file, remove_file
from rws.inspect import describe
from rws.methods import list_methods
from rws.ops import apply, patched, remove
from rws.patch import Patch, compose, load

__all__ = [
    "Patch",
    "RwsError",
    "__version__",
    "apply",
    "apply_file",
    "compose",
    "describe",
    "extract",
    "layer_deltas",
    "list_codecs",
    "list_methods",
    "load",
    "patched",
    "remove",
    "remove_file",
]
