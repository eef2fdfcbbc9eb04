"""gpt2gen: GPT-2 text generation with a C++ engine under a small NumPy-facing API."""

from . import reference
from ._core import (
    QueueFullError,
    adaptive_threads,
    backend,
    num_threads,
    set_adaptive_threads,
    set_backend,
    set_num_threads,
    supported_backends,
)
from .async_engine import AsyncEngine, AsyncRequest
from .checkpoint import CheckpointError, load_pretrained
from .engine import CancelToken, forward, generate, processed_probabilities
from .exercise import gen_text, load_encoder_hparams_and_params
from .model import GPT2
from .packing import pack_params, unpack_params
from .results import Completion, Delta, Score, TokenLogprob
from .tokenizer import Tokenizer

__all__ = [
    "AsyncEngine",
    "AsyncRequest",
    "CancelToken",
    "CheckpointError",
    "Completion",
    "Delta",
    "GPT2",
    "QueueFullError",
    "Score",
    "TokenLogprob",
    "Tokenizer",
    "adaptive_threads",
    "backend",
    "forward",
    "gen_text",
    "generate",
    "load_encoder_hparams_and_params",
    "load_pretrained",
    "num_threads",
    "pack_params",
    "processed_probabilities",
    "reference",
    "set_adaptive_threads",
    "set_backend",
    "set_num_threads",
    "supported_backends",
    "unpack_params",
]
