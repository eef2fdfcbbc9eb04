"""What the routes share: the model and engine (once loaded), settings, metrics, keys."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

import gpt2gen

from .auth import APIKeys
from .chat_templates import TEMPLATES
from .config import ServerConfig
from .errors import APIError, invalid
from .logprobs import TokenText
from .metrics import Metrics

log = logging.getLogger("gpt2gen.server")

# Texts longer than this are encoded in a worker thread so the event loop keeps serving.
_ENCODE_INLINE_CHARS = 4096


class ServerState:
    def __init__(self, source, config: ServerConfig, on_load_error: Optional[Callable] = None):
        self.config = config
        self.keys = APIKeys(config.api_keys)
        self.template = TEMPLATES[config.chat_template] if config.chat_template else None
        self.metrics = Metrics(lambda: self.engine)
        self.model = None
        self.engine = None
        self.load_error: Optional[BaseException] = None
        self._source = source
        self._owns_engine = False
        self._on_load_error = on_load_error
        self._tasks: set = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Takes the engine or model, or loads from the loader in a worker thread meanwhile
        serving 503s; a failed load is logged, kept for /health and passed to on_load_error."""
        if callable(self._source) and not _is_engine(self._source) and not _is_model(self._source):
            self.keep(asyncio.ensure_future(self._load(self._source)))
        else:
            self._use(self._source)

    async def _load(self, loader) -> None:
        try:
            self._use(await asyncio.to_thread(loader))
            log.info("model loaded: serving %s", self.config.served_model_name)
        except Exception as error:
            self.load_error = error
            log.error("the model failed to load: %s", error)
            if self._on_load_error is not None:
                self._on_load_error(error)

    def _use(self, loaded) -> None:
        if _is_engine(loaded):
            engine, model = loaded, loaded.model
        elif _is_model(loaded):
            engine = gpt2gen.AsyncEngine(loaded, max_batch=self.config.max_batch, max_queue=self.config.max_queue)
            model, self._owns_engine = loaded, True
        else:
            raise TypeError(f"expected a gpt2gen.GPT2, an AsyncEngine or a loader returning one, "
                            f"got {type(loaded).__name__}")
        self.token_text = TokenText(model)
        self.n_vocab = int(model.hparams["n_vocab"]) if "n_vocab" in model.hparams else len(model.encoder.encoder)
        self.model, self.engine = model, engine

    async def stop(self) -> None:
        if self.engine is not None and self._owns_engine:
            await self.engine.aclose()

    def keep(self, task: asyncio.Task) -> asyncio.Task:
        """Holds a reference to a background task until it ends (asyncio keeps only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- checks the routes make --------------------------------------------------------------

    def ready(self) -> None:
        if self.engine is not None:
            return
        if self.load_error is not None:
            raise APIError(503, f"The model failed to load: {self.load_error}", code="model_load_failed")
        raise APIError(503, "The model is still loading; retry shortly.", code="model_loading",
                       headers={"Retry-After": str(self.config.retry_after_seconds)})

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name != self.config.served_model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves "
                           f"`{self.config.served_model_name}`", param="model", code="model_not_found")

    async def encode(self, text: str, field: str) -> list:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\\ud800"); UTF-8 cannot
            raise invalid(field, f"{field} is not valid Unicode: it holds a lone surrogate") from None
        if len(text) <= _ENCODE_INLINE_CHARS:
            return self.model.encode(text)
        return await asyncio.to_thread(self.model.encode, text)


def _is_engine(obj) -> bool:
    return hasattr(obj, "submit") and hasattr(obj, "aclose")


def _is_model(obj) -> bool:
    return isinstance(obj, gpt2gen.GPT2)
