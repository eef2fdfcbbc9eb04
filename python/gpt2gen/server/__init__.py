"""An OpenAI-compatible HTTP server for gpt2gen (``gpt2gen serve``; ``pip install "gpt2gen[serve]"``).

``create_app(engine_or_model, ServerConfig(...))`` builds the FastAPI app; run it with any ASGI
server. ``import gpt2gen`` does not import this package or its dependencies.
"""



def missing_extra(name: str) -> str:
    return f"gpt2gen's server needs the serve extra ({name} is missing): pip install 'gpt2gen[serve]'"


try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as error:
    raise ImportError(missing_extra(error.name)) from error

from .app import create_app  # noqa: E402 - after the check, which names what is missing
from .config import ServerConfig  # noqa: E402

__all__ = ["ServerConfig", "create_app", "missing_extra"]
