"""The error hierarchy: every failure the library reports is a `FeatxError`."""

from __future__ import annotations


class FeatxError(Exception):
    """Base class of every error featx-search raises on purpose.

    ``hint`` says what to do about it; ``str(err)`` carries message and hint.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\nHint: {hint}")


class ConfigError(FeatxError, ValueError):
    """An argument or option has a bad value (the message names it)."""


class LayerError(ConfigError):
    """A requested layer (FX node) does not exist in the model."""


class ModelError(FeatxError):
    """A model cannot be built, found or traced."""


class WeightsError(FeatxError):
    """Weights cannot be downloaded, read or loaded into the model."""


class ImageError(FeatxError):
    """A file cannot be decoded as an image."""


class LibraryError(FeatxError):
    """The library (database or index files) cannot be opened or used."""


class LibraryVersionError(LibraryError):
    """The database was written by another (usually newer) version of featx-search."""


class SpaceError(LibraryError):
    """An embedding space is unknown, ambiguous, or not usable here."""
