"""Criterion registry in the models' style: `@register_criterion("model", ...)` and
`create_criterion(model_name, **kwargs)`.

The registry imports no criterion module: the package's `__init__` imports them (which registers
them), as `densepred.models` does for the models, so the modules that register and the registry
never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_CRITERIA: dict[str, Callable[..., nn.Module]] = {}


def register_criterion(*model_names: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a criterion factory for one or more model names."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for name in model_names:
            if name in _CRITERIA:
                raise ValueError(f"criterion for {name!r} is registered twice")
            _CRITERIA[name] = factory
        return factory

    return wrap


def create_criterion(model_name: str, **kwargs: Any) -> nn.Module:
    """Build the criterion that trains model `model_name`."""
    try:
        factory = _CRITERIA[model_name]
    except KeyError:
        raise ValueError(f"no criterion for model {model_name!r}; known: {sorted(_CRITERIA)}") from None
    return factory(**kwargs)
