"""Task losses and per-model criteria.

A criterion is an `nn.Module` built by `create_criterion(model_name, tasks=..., dataset=..., ...)`.
`criterion(outputs, batch)` takes the model's train-mode output dict and the batch dict (image,
semseg, depth, normals, edge tensors with a leading batch axis) and returns a dict of scalar tensors:
`"total"` (what is back-propagated) and one entry per weighted term, named `"<task>/<term>"`
(e.g. `"depth/silog"`), so that the engine can log each term and name the one that became NaN.
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
    from densepred.losses import criteria  # noqa: F401 (registration)

    try:
        factory = _CRITERIA[model_name]
    except KeyError:
        raise ValueError(f"no criterion for model {model_name!r}; known: {sorted(_CRITERIA)}") from None
    return factory(**kwargs)
