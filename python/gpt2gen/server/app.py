"""The FastAPI application: routes, middleware and the engine's lifetime.

``create_app`` knows nothing of the command line or of uvicorn, so any ASGI server (or Ray
Serve's ingress) can run it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from . import errors
from .chat import create_chat_completion
from .completions import create_completion
from .config import ServerConfig
from .limits import BodySizeLimit, BodyTooLarge, too_large
from .metrics import CONTENT_TYPE, StatusCounter
from .state import ServerState
from .tokenization import detokenize, tokenize

# The playground page (static/index.html) and its files, shipped inside the package.
PLAYGROUND = Path(__file__).with_name("static")
# It loads nothing from elsewhere and talks only to this server.
PLAYGROUND_HEADERS = {"Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'none'", "X-Content-Type-Options": "nosniff"}


def create_app(engine_or_model, config: Optional[ServerConfig] = None, *,
               on_load_error: Optional[Callable[[BaseException], None]] = None) -> FastAPI:
    """An OpenAI-compatible app serving one model.

    ``engine_or_model``: a ``gpt2gen.AsyncEngine`` (used as is; its owner closes it), a
    ``gpt2gen.GPT2`` (the app runs an AsyncEngine on it with ``config.max_batch`` /
    ``config.max_queue`` for its lifetime), or a callable returning either, called in a worker
    thread at startup while ``/health`` and every model route answer 503. ``on_load_error(error)``
    hears of a failed load (the app keeps answering 503 with the reason).
    """
    config = ServerConfig() if config is None else config
    state = ServerState(engine_or_model, config, on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        yield
        await state.stop()

    app = FastAPI(title="gpt2gen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    errors.install(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, error):
        return too_large(config.max_body_bytes).response()

    # The last added is the outermost: CORS headers go on every response, errors included.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(StatusCounter, metrics=state.metrics)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])

    def authorized(request: Request) -> None:
        state.keys.check(request.headers.get("authorization", ""))

    model_route = [Depends(authorized), Depends(lambda: state.ready())]
    started = int(time.time())

    def card() -> dict:
        return {"id": config.served_model_name, "object": "model", "created": started,
                "owned_by": "gpt2gen", "max_model_len": state.model.n_ctx}

    @app.get("/health")
    async def health():
        state.ready()
        return {"status": "ok"}

    @app.get("/metrics")  # open, as /health: it shows load, never request content
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=model_route)
    async def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=model_route)
    async def model(model_id: str):
        state.check_model(model_id)
        return card()

    @app.post("/v1/completions", dependencies=model_route)
    async def completions(request: Request):
        return _response(await create_completion(state, request))

    @app.post("/v1/chat/completions", dependencies=model_route)
    async def chat_completions(request: Request):
        return _response(await create_chat_completion(state, request))

    @app.post("/tokenize", dependencies=model_route)
    async def tokenize_route(request: Request):
        return await tokenize(state, request)

    @app.post("/detokenize", dependencies=model_route)
    async def detokenize_route(request: Request):
        return await detokenize(state, request)

    @app.get("/")  # open, as /health: the page holds no data; its API calls carry the key
    async def playground():
        return FileResponse(PLAYGROUND / "index.html", headers=PLAYGROUND_HEADERS)

    app.mount("/static", StaticFiles(directory=PLAYGROUND), name="static")
    return app


def _response(result):
    return result if isinstance(result, Response) else JSONResponse(result)
