"""Model registry. `list_models()` names every model `petal train --model` accepts."""

from petal.models import backbones, resnet, test_time_flip, tutorial  # noqa: F401  (registering their models and layers)
from petal.models._registry import ModelEntry, ModelSpec, create_model, get_model_entry, list_models, register_model

DEFAULT_MODEL = "mobilenet-v2"

__all__ = ["DEFAULT_MODEL", "ModelEntry", "ModelSpec", "create_model", "get_model_entry", "list_models", "register_model"]
