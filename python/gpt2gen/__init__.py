"""gpt2gen: GPT-2 text generation with a C++ engine under a small NumPy-facing API."""

from . import reference
from ._core import CancelToken, backend, num_threads, set_backend, set_num_threads, supported_backends
from .engine import forward, generate
from .exercise import gen_text, load_encoder_hparams_and_params

__all__ = [
    "CancelToken",
    "backend",
    "forward",
    "gen_text",
    "generate",
    "load_encoder_hparams_and_params",
    "num_threads",
    "reference",
    "set_backend",
    "set_num_threads",
    "supported_backends",
]
