"""rws: weight-space robustness patching (Robust Weight Signatures, RiFT) as patch files."""

__version__ = "0.1.0"

from rws.codecs import list_codecs
from rws.criticality import mrc
from rws.errors import RwsError
from rws.extract import extract, layer_deltas
from rws.fileops import apply_file, remove_file
from rws.hub import pull, push
from rws.inspect import describe
from rws.methods import list_methods
from rws.methods.interpolation import interpolate
from rws.methods.rift import rift
from rws.models import list_models
from rws.ops import apply, patched, remove
from rws.patch import Patch, compose, load
from rws.robustness.attacks import attack, list_attacks
from rws.robustness.corruptions import CORRUPTIONS, corrupt, list_corruptions
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report
from rws.train import TrainConfig, finetune, recalibrate_bn

__all__ = [
    "CORRUPTIONS",
    "Patch",
    "Report",
    "RwsError",
    "TrainConfig",
    "__version__",
    "apply",
    "apply_file",
    "attack",
    "compose",
    "corrupt",
    "describe",
    "evaluate",
    "extract",
    "finetune",
    "interpolate",
    "layer_deltas",
    "list_attacks",
    "list_codecs",
    "list_corruptions",
    "list_methods",
    "list_models",
    "load",
    "mrc",
    "patched",
    "pull",
    "push",
    "recalibrate_bn",
    "remove",
    "remove_file",
    "rift",
]
