"""Models: timm backbones, PolyMaX, MQTransformer, DeepLabv3+ and multi-task baselines.

Importing this package registers every model with the registry.
"""

from densepred.models import baselines, deeplab, mqtransformer, polymax  # noqa: F401 (registration)
from densepred.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
