"""Model registry. `list_models()` names every model `petal train --model` accepts."""

from petal.models._registry import ModelEntry, ModelSpec, create_model, get_model_entry, list_models, register_model
from petal.models import tutorial  # noqa: F401  (registers the tutorial's models)

DEFAULT_MODEL = "tutorial-augmented"

__all__ = ["DEFAULT_MODEL", "ModelEntry", "ModelSpec", "create_model", "get_model_entry", "list_models", "register_model"]
