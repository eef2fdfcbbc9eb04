"""The errors of checkpoint loading: every problem with a file is a ``CheckpointError``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class CheckpointError(ValueError):
    """A checkpoint, config or tokenizer file that cannot be loaded (the message says why)."""


class CheckpointDownloadError(CheckpointError, OSError):
    """A named model could not be downloaded; the message says what to fetch by hand, and where.

    The facts behind the message are attributes, so a front end (the command line) can word its
    own advice: ``model_name``, ``repo_id``, ``files`` (what to fetch), ``target`` (the
    ``models_dir/<name>`` directory, or None for the Hugging Face cache) and ``reason`` (one
    line). They default to None so that the exception survives pickling (``cls(*args)``).
    """

    def __init__(
        self,
        message: str,
        *,
        model_name: Optional[str] = None,
        repo_id: Optional[str] = None,
        files: tuple[str, ...] = (),
        target: Optional[Path] = None,
        reason: Optional[str] = None,
    ):
        super().__init__(message)
        self.model_name, self.repo_id, self.files = model_name, repo_id, files
        self.target, self.reason = target, reason


class PickleNotAllowedError(CheckpointError):
    """Only a pickled ``pytorch_model.bin`` was found and ``allow_pickle`` was not given.

    ``path`` is the pickle file, so a front end can name its own spelling of the opt-in.
    """

    def __init__(self, message: str, *, path: Optional[Path] = None):
        super().__init__(message)
        self.path = path
