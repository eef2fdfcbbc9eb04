"""Pickled PyTorch checkpoints (``pytorch_model.bin``), read only on request.

Unpickling a file can run arbitrary code, so a directory holding only a pickle is refused unless
the caller passes ``allow_pickle=True``; then ``torch.load(..., weights_only=True)`` reads it
(torch is needed only then).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import CheckpointError, PickleNotAllowedError


class TorchTensors(Mapping):
    """A torch state dict whose items are float32 NumPy arrays (sharing memory where possible)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{path} is a pickled PyTorch checkpoint; reading it needs torch (pip install "
                "torch), or convert it to model.safetensors on a machine that has torch"
            ) from None
        self._torch = torch
        try:
            try:
                state = torch.load(
                    path, map_location="cpu", weights_only=True, mmap=True
                )
            except RuntimeError:  # e.g. the legacy (non-zip) format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for corrupt or unsafe files
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) failed: {_cause(e)}"
            ) from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CheckpointError(
                f"{path}: expected a state dict of tensor name -> tensor"
            )
        self._state = state

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._state[name]
        if not t.is_floating_point():
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has dtype {t.dtype}; weights must be floating point"
            )
        return t.detach().to(self._torch.float32).contiguous().numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _cause(error: Exception) -> str:
    """The exception's type and message on one line; some (an empty file's EOFError) have none."""
    message = " ".join(str(error).split())
    if not message and isinstance(error, EOFError):
        message = "the file ends too early (it is empty or truncated)"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def pickle_refusal(path: Path) -> PickleNotAllowedError:
    return PickleNotAllowedError(
        f"{path.parent}: only a pickled PyTorch checkpoint ({path.name}) was found, and it is not "
        "loaded by default because unpickling a file can execute arbitrary code. Either convert it "
        "once to model.safetensors (e.g. with transformers: "
        "GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir)), or, if you trust the file, "
        "pass allow_pickle=True to read it with torch.load(..., weights_only=True) (needs torch).",
        path=path,
    )
