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
    """An argument or option has a bad value.

    The message names the Python parameter (``k must be at least 1``); ``param`` holds that
    name so that a front end can say it in its own terms (the CLI shows ``-k``).
    """

    def __init__(self, message: str, *, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.param = param

    def renamed(self, name: str) -> ConfigError:
        """The same error with the parameter called ``name`` (e.g. a command-line flag)."""
        if self.param is None or not self.message.startswith(self.param):
            return self
        err = type(self).__new__(type(self))
        ConfigError.__init__(
            err, name + self.message[len(self.param) :], hint=self.hint, param=self.param
        )
        return err


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


class ReadOnlyError(LibraryError):
    """The library cannot be written here (read-only storage, no write permission, or opened
    with ``read_only``); it still answers queries."""
