"""One error hierarchy for StoreLens.

Every error a user can cause (a missing file, a bad config, a corrupt image, a model that
does not match its manifest) is a :class:`StoreLensError`. Its message says what went wrong
*and* how to fix it; the CLI prints it as one line and exits with ``exit_code``, never a
traceback (``--verbose`` shows one).
"""

from __future__ import annotations


class StoreLensError(Exception):
    """Base class for all user-facing StoreLens errors."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} — {hint}" if hint else message)


class ConfigError(StoreLensError):
    """The configuration file or environment is invalid."""

    exit_code = 2


class InputError(StoreLensError):
    """A file, image or argument given by the user cannot be used."""

    exit_code = 3


class ImageError(InputError):
    """An image is missing, unreadable, truncated or not an image."""


class BundleError(StoreLensError):
    """A model bundle is missing, tampered with, or does not match its manifest."""

    exit_code = 4


class ModelMismatchError(BundleError):
    """A model's inputs/outputs do not match what its manifest promises."""


class BackendError(StoreLensError):
    """An inference backend (onnxruntime, OpenVINO) is unavailable or failed."""

    exit_code = 5


class IndexMismatchError(StoreLensError):
    """An index was built by another encoder, dimension or dtype than the one in use."""

    exit_code = 6


class CatalogError(StoreLensError):
    """The catalog database or an import file is invalid."""

    exit_code = 7


class CaptureError(StoreLensError):
    """A camera or frame source cannot be opened or read."""

    exit_code = 8


class CommandError(StoreLensError):
    """A remote (MQTT) command is malformed, oversized or not allowed."""

    exit_code = 9


class ParityError(StoreLensError):
    """A quantized model failed the parity gate against its fp32 reference."""

    exit_code = 10
