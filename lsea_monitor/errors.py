"""Exceptions raised by the LSEA Monitor core. Each message says what failed and what to do."""

from sklearn.exceptions import NotFittedError as SklearnNotFittedError


class LseaError(Exception):
    """Base class of every error raised on purpose by this project."""


class InputValidationError(LseaError, ValueError):
    """An array, image or parameter given by the caller has the wrong shape, type or values."""


class NotFittedError(LseaError, SklearnNotFittedError):
    """A detector or transform was used before ``fit`` (also a scikit-learn ``NotFittedError``)."""


class ArtefactError(LseaError):
    """A detector artefact is missing, unreadable, tampered with, or does not match the model."""


class DatasetLayoutError(LseaError, FileNotFoundError):
    """A dataset folder does not have the expected official layout."""


class ImageDecodeError(LseaError, ValueError):
    """An image (file or message) cannot be decoded into an RGB array."""


class ModelLoadError(LseaError):
    """A checkpoint or model class cannot be loaded, or the hooked layer does not exist."""
