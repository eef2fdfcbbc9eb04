"""gpt2gen: GPT-2 text generation with a C++ engine under a small NumPy-facing API."""

from . import reference
from ._core import CancelToken, backend, num_threads, set_backend, set_num_threads, supported_backends
from .checkpoint import CheckpointError, load_pretrained
from .engine import forward, generate, processed_probabilities
from .exercise import gen_text, load_encoder_hparams_and_params
from .model import GPT2, Completion, Score, TokenLogprob
from .packing import pack_params, unpack_params
from .tokenizer import Tokenizer

__all__ = [
    "CancelToken",
    "CheckpointError",
    "Completion",
    "GPT2",
    "Score",
    "TokenLogprob",
    "Tokenizer",
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
    "set_backend",
    "set_num_threads",
    "supported_backends",
    "unpack_params",
]
