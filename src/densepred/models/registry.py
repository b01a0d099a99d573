"""Model registry in timm's style: `@register_model("name")` and `create_model(name, **kwargs)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under `name`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with `kwargs`.

    Every model follows one output contract: in eval mode `forward(image)` returns a dict keyed by
    task name with predictions at input resolution (semseg logits (B,C,H,W), depth (B,1,H,W) metres,
    normals (B,3,H,W) unit vectors, edge logits (B,1,H,W)); in train mode it may add auxiliary
    entries (deep supervision) that its criterion reads.
    """
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}") from None
    return factory(**kwargs)
