"""The server's settings, independent of how it is started (CLI, tests, Ray Serve)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ServerConfig:
    served_model_name: str = "gpt2"  # the id clients send as "model" and /v1/models lists
    api_keys: Sequence[str] = ()  # empty: no authentication
    max_batch: int = 16  # used when the app builds the engine from a model
    max_queue: int = 256
    chat_template: Optional[str] = None  # a name from chat_templates.TEMPLATES; None: chat is a 400
    cors_origins: Sequence[str] = ()
    max_body_bytes: int = 1 << 20  # larger bodies are a 413 before they are read
    retry_after_seconds: int = 1  # sent with 429 (queue full) and 503 (loading)

    def __post_init__(self):
        if isinstance(self.api_keys, str) or isinstance(self.cors_origins, str):
            raise TypeError("api_keys and cors_origins must be lists of str")
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")
        for name in ("max_batch", "max_queue", "max_body_bytes", "retry_after_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.served_model_name, str) or not self.served_model_name:
            raise ValueError("served_model_name must be a non-empty string")
        if self.chat_template is not None:
            from .chat_templates import TEMPLATES

            if self.chat_template not in TEMPLATES:
                raise ValueError(f"unknown chat template {self.chat_template!r} "
                                 f"(built in: {', '.join(TEMPLATES)})")
