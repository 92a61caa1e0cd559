"""The model zoo: small definitions of the architectures used by the RWS and RiFT papers.

Importing this package registers the built-in models (one module per family).
"""

from rws.models import preact_resnet, resnet, small_cnn, vgg, wrn  # noqa: F401  (registers models)
from rws.models.normalization import NORMALIZE_CHOICES, probe_normalization, set_normalization
from rws.models.registry import MODELS, create_model, get_model, list_models, register_model
from rws.models.resolve import (
    check_input_size,
    load_model,
    model_spec,
    parse_model_kw,
    resolve_model,
    split_spec,
)

__all__ = [
    "MODELS",
    "NORMALIZE_CHOICES",
    "check_input_size",
    "create_model",
    "get_model",
    "list_models",
    "load_model",
    "model_spec",
    "parse_model_kw",
    "probe_normalization",
    "register_model",
    "resolve_model",
    "set_normalization",
    "split_spec",
]
