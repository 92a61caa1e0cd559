"""Fine-tuning: config, the training loop, resumable run state, BatchNorm recalibration.

(:mod:`rws.training.recalibrate` and :mod:`rws.training.runs`, file-level workflows, are imported
from their modules.)
"""

from rws.training.bn import recalibrate_bn
from rws.training.config import EpochStats, TrainConfig, TrainResult
from rws.training.freeze import grad_only
from rws.training.loop import finetune
from rws.training.metrics import accuracy
from rws.training.weights import init_model, save_result

__all__ = [
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "finetune",
    "grad_only",
    "init_model",
    "recalibrate_bn",
    "save_result",
]
