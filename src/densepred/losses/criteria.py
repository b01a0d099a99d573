"""Imports every module that registers a criterion (see `densepred.losses.create_criterion`)."""

from densepred.losses import multitask_criterion, polymax_criterion  # noqa: F401 (registration)
