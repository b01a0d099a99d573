"""Task losses and per-model criteria.

A criterion is an `nn.Module` built by `create_criterion(model_name, tasks=..., dataset=..., ...)`.
`criterion(outputs, batch)` takes the model's train-mode output dict and the batch dict (image,
semseg, depth, normals, edge tensors with a leading batch axis) and returns a dict of scalar tensors:
`"total"` (what is back-propagated) and one entry per weighted term, named `"<task>/<term>"`
(e.g. `"depth/silog"`), so that the engine can log each term and name the one that became NaN.

Importing this package registers every criterion with the registry (losses/registry.py).
"""

from densepred.losses import multitask_criterion, polymax_criterion  # noqa: F401 (registration)
from densepred.losses.registry import create_criterion, register_criterion

__all__ = ["create_criterion", "register_criterion"]
