"""The errors of checkpoint loading: every problem with a file is a ``CheckpointError``."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint, config or tokenizer file that cannot be loaded (the message says why)."""


class CheckpointDownloadError(CheckpointError, OSError):
    """A named model could not be downloaded; the message says what to fetch by hand, and where."""
