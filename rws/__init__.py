"""rws: weight-space robustness patching (Robust Weight Signatures, RiFT) as patch files."""

from rws._version import __version__
from rws.errors import RwsError
from rws.hub.client import pull, push
from rws.methods import list_methods
from rws.methods.extract import layer_deltas
from rws.models import list_models
from rws.patching.codecs import list_codecs
from rws.patching.describe import describe
from rws.patching.files import apply_file, remove_file
from rws.patching.ops import patched, remove
from rws.patching.patch import Patch, load
from rws.recipes.apply import apply
from rws.recipes.compose import compose
from rws.recipes.criticality import mrc
from rws.recipes.extract import extract
from rws.recipes.interpolation import interpolate
from rws.recipes.rift import rift
from rws.robustness.attacks import attack, list_attacks
from rws.robustness.corruptions import CORRUPTIONS, corrupt, list_corruptions
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report
from rws.routing import Router
from rws.training import TrainConfig, finetune, recalibrate_bn

__all__ = [
    "CORRUPTIONS",
    "Patch",
    "Report",
    "Router",
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
