"""The model zoo: small definitions of the architectures used by the RWS and RiFT papers."""

from rws.models import small_cnn  # noqa: F401  (registers built-in models)
from rws.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
