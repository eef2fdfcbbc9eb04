"""The OpenAI server on Ray Serve, shaped like ``ray.serve.llm.build_openai_app``.

    from ray import serve
    from gpt2gen.ray_serve import build_openai_app

    serve.run(build_openai_app({"model_source": "gpt2", "num_replicas": 2, "num_threads": 1}))
    # or: serve run gpt2gen.ray_serve:build_openai_app model_source=gpt2 num_replicas=2

Every replica loads the model, then serves ``gpt2gen.server.create_app`` (the routes of
``gpt2gen serve``) on its own continuous-batching engine; Ray's proxy spreads the requests over the
replicas. Ray marks a replica ready only once its model has loaded, so no request meets a loading
replica (also when the autoscaler adds one).

Needs the ``ray`` extra (``pip install "gpt2gen[ray]"``, Ray >= 2.47); ``import gpt2gen`` never
imports this.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Union

try:
    import ray
    from ray import serve
    from ray.serve.config import AutoscalingConfig
except ImportError as error:
    raise ImportError(
        f'gpt2gen.ray_serve needs Ray Serve: pip install "gpt2gen[ray]" ({error.name} is missing)'
    ) from error

# serve.ingress takes a function building the app in each replica since Ray 2.47.
if tuple(int(part) for part in ray.__version__.split(".")[:2]) < (2, 47):
    raise ImportError(
        f"gpt2gen.ray_serve needs Ray >= 2.47, found {ray.__version__}: "
        f'pip install -U "gpt2gen[ray]"'
    )

from . import _core  # noqa: E402
from .packing import FORMATS  # noqa: E402
from .server import ServerConfig, create_app  # noqa: E402 - after the checks, which name what is missing

__all__ = ["AppConfig", "build_openai_app"]

DTYPES = ("float32", *FORMATS)
DEPLOYMENT_NAME = "gpt2gen"


@dataclass(frozen=True)
class AppConfig:
    """What ``build_openai_app`` deploys. ``server`` defaults to ``ServerConfig`` serving the
    model as ``model_source``; ``from_dict`` takes the server's options flat, as ``serve run`` does.
    """

    model_source: str  # a model name (gpt2 ... gpt2-xl) or a directory present on every node
    num_replicas: Optional[int] = None  # default 1; or autoscaling_config, not both
    autoscaling_config: Optional[Mapping] = None  # Ray Serve's (min_replicas, max_replicas, ...)
    num_threads: int = 1  # engine threads per replica; each replica reserves this many CPUs
    dtype: str = "float32"
    kv_cache_dtype: str = "float32"  # or "bf16": keys and values rounded, half the cache
    models_dir: Optional[str] = None  # where each node keeps downloaded models
    allow_pickle: bool = False  # pickled pytorch_model.bin can run code: trusted files only
    # requests a replica holds at once; the others wait in Ray's router for the first free replica
    max_ongoing_requests: Optional[int] = None  # default: server.max_batch
    server: Optional[ServerConfig] = None

    def __post_init__(self):
        if isinstance(self.model_source, os.PathLike):
            object.__setattr__(self, "model_source", os.fspath(self.model_source))
        if not isinstance(self.model_source, str) or not self.model_source:
            raise ValueError(
                f"model_source must be a model name or directory, got {self.model_source!r}"
            )
        for name in ("num_replicas", "max_ongoing_requests"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        _check_positive("num_threads", self.num_threads)
        if self.autoscaling_config is not None:
            if not isinstance(self.autoscaling_config, Mapping):
                raise TypeError(
                    f"autoscaling_config must be a dict, got {type(self.autoscaling_config).__name__}"
                )
            if self.num_replicas is not None:
                raise ValueError("give num_replicas or autoscaling_config, not both")
            known = getattr(AutoscalingConfig, "model_fields", None) or AutoscalingConfig.__fields__
            unknown = sorted(set(self.autoscaling_config) - set(known))
            if unknown:  # Ray would ignore them
                raise ValueError(
                    f"autoscaling_config: unknown key(s) {', '.join(map(str, unknown))} "
                    f"(known: {', '.join(sorted(known))})"
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _core.check_kv_cache_dtype(self.kv_cache_dtype)
        if self.models_dir is not None and not isinstance(self.models_dir, (str, os.PathLike)):
            raise TypeError(f"models_dir must be a directory, got {self.models_dir!r}")
        if not isinstance(self.allow_pickle, bool):
            raise TypeError(f"allow_pickle must be true or false, got {self.allow_pickle!r}")
        if self.server is None:
            object.__setattr__(self, "server", ServerConfig(served_model_name=self.model_source))
        elif not isinstance(self.server, ServerConfig):
            raise TypeError(
                f"server must be a gpt2gen.server.ServerConfig, got {type(self.server).__name__}"
            )

    @classmethod
    def from_dict(cls, args: Mapping[str, Any]) -> AppConfig:
        """From a flat dict of this class's and ``ServerConfig``'s fields (but ``server``).

        Values may be strings, as ``serve run`` passes them: numbers, ``true``/``false``, lists
        as ``a,b`` or JSON, ``autoscaling_config`` as JSON. ``served_model_name`` defaults to
        ``model_source``; ``api_keys`` to the ``GPT2GEN_API_KEY`` environment variable, as in
        ``gpt2gen serve``.
        """
        if not isinstance(args, Mapping):
            raise TypeError(f"config must be a dict or an AppConfig, got {type(args).__name__}")
        own = {f.name for f in fields(cls)} - {"server"}
        served = {f.name for f in fields(ServerConfig)}
        unknown = sorted(set(args) - own - served)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(own | served))})"
            )
        if "model_source" not in args:
            raise ValueError("model_source is required: a model name or a directory")
        own_hints = typing.get_type_hints(cls)
        server_hints = typing.get_type_hints(ServerConfig)
        config = cls(**{k: _parse(k, own_hints[k], v) for k, v in args.items() if k in own})
        server = {k: _parse(k, server_hints[k], v) for k, v in args.items() if k in served}
        server.setdefault("served_model_name", config.model_source)
        env_key = os.environ.get("GPT2GEN_API_KEY")
        if "api_keys" not in server and env_key:
            server["api_keys"] = (env_key,)
        return replace(config, server=ServerConfig(**server))

    def deployment_options(self) -> dict:
        """``serve.deployment``'s options for the replicas."""
        options = {
            "name": DEPLOYMENT_NAME,
            "ray_actor_options": {"num_cpus": self.num_threads},
            "max_ongoing_requests": self.max_ongoing_requests or self.server.max_batch,
        }
        if self.autoscaling_config is not None:
            # Ray's default target (2 requests per replica) would add a replica while one batch
            # still has room: a replica is busy when its batch is full.
            options["autoscaling_config"] = {
                "target_ongoing_requests": self.server.max_batch,
                **self.autoscaling_config,
            }
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


def build_openai_app(config: Union[AppConfig, Mapping[str, Any]]) -> serve.Application:
    """A Ray Serve application serving the OpenAI routes of ``gpt2gen serve`` from replicas.

    ``config``: an ``AppConfig`` or a dict of its fields and ``ServerConfig``'s, flat (see
    ``AppConfig.from_dict``). Run it with ``serve.run(app)``, or give this function to
    ``serve run gpt2gen.ray_serve:build_openai_app key=value ...``. Raises ValueError/TypeError
    naming the option for a bad config.
    """
    if not isinstance(config, AppConfig):
        config = AppConfig.from_dict(config)

    def build_replica_app():  # runs in each replica as it starts
        return replica_app(config)

    ingress = serve.ingress(build_replica_app)()
    try:
        deployment = serve.deployment(ingress, **config.deployment_options())
    except ValueError as error:  # Ray's (pydantic's) check of autoscaling_config's values
        problems = error.errors() if hasattr(error, "errors") else ()
        raise ValueError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems)
            or " ".join(str(error).split())
        ) from None
    return deployment.bind()


def replica_app(config: AppConfig):
    """Loads the model (Ray routes nothing to the replica meanwhile) and serves it."""
    import gpt2gen

    gpt2gen.set_num_threads(config.num_threads)
    model = gpt2gen.GPT2.from_pretrained(
        config.model_source,
        config.models_dir,
        dtype=config.dtype,
        kv_cache_dtype=config.kv_cache_dtype,
        allow_pickle=config.allow_pickle,
    )
    app = create_app(model, config.server)
    app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
    return app


class ReplicaHeader:
    """Names the replica that answered in an ``x-gpt2gen-replica`` header (to match a response
    with a replica's logs). Plain ASGI, so streaming and disconnects pass through untouched."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-gpt2gen-replica", replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _parse(name: str, hint, value):
    """A ``serve run`` string as the field's type; other values are left to the field's check."""
    if not isinstance(value, str):
        return value
    kinds = (
        [k for k in typing.get_args(hint) if k is not type(None)]
        if typing.get_origin(hint) is Union
        else [hint]
    )
    kind = typing.get_origin(kinds[0]) or kinds[0]
    try:
        if kind is int:
            return int(value)
        if kind is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError
            return value.lower() in _TRUE
        if kind is Mapping:
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError
            return parsed
        if kind is Sequence:
            if value.lstrip().startswith("["):
                return tuple(json.loads(value))
            parts = tuple(part.strip() for part in value.split(",") if part.strip())
            if not parts:  # (an explicit empty list is "[]")
                raise ValueError
            return parts
    except ValueError:  # (json's errors are ValueErrors)
        expected = {
            int: "an integer",
            bool: "true or false",
            Mapping: "a JSON object",
            Sequence: "a comma-separated or JSON list",
        }[kind]
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    return value
