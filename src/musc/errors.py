"""Exceptions raised for bad input; the CLI turns each into a one-line message and a non-zero exit."""

from __future__ import annotations


class MuscError(Exception):
    """Base class of every error musc raises on purpose."""


class ConfigError(MuscError, ValueError):
    """An option has a value that cannot work (e.g. an input size that is not a multiple of the patch size)."""


class ImageReadError(MuscError):
    """An image file is missing, unreadable or corrupt."""


class InputError(MuscError):
    """The set of inputs cannot be scored (empty folder, fewer than two images, ...)."""


class BackboneError(MuscError):
    """A backbone cannot be built: unknown name, weights unavailable or not matching the model."""


class DatasetError(MuscError):
    """A dataset on disk does not have the layout its reader expects."""
