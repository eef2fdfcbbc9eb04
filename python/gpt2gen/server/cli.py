"""``gpt2gen serve``: the server's command line, run with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..packing import FORMATS
from . import ServerConfig, create_app, missing_extra

EPILOG = """\
examples:
  gpt2gen serve --model gpt2                                  http://127.0.0.1:8000/v1
  gpt2gen serve --model ./my-gpt2 --dtype int8 --port 9000 --chat-template plain
  GPT2GEN_API_KEY=secret gpt2gen serve --model gpt2 --host 0.0.0.0

then:
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "gpt2", "prompt": "Hello", "max_tokens": 20}'

The port opens at once; /health answers 503 until the model has loaded, then 200.
"""

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="gpt2gen serve", description="Serve a GPT-2 over OpenAI's HTTP API (completions, chat "
        "with a template, models, tokenize) with continuous batching.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("-m", "--model", required=True, help="model name (gpt2 ... gpt2-xl, 124M ... 1558M) or directory")
    m.add_argument("--models-dir", help="where downloaded models are kept (default: the Hugging Face cache)")
    m.add_argument("--dtype", choices=["float32", *FORMATS], default="float32",
                   help="weights as stored (float32, default) or packed once to bf16 / int8 / int4")
    m.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a pickled pytorch_model.bin (can run code: trusted files only)")
    m.add_argument("--served-model-name", metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: --model as given)")
    m.add_argument("--chat-template", choices=["plain", "chatml"],
                   help="enable /v1/chat/completions with a built-in template (GPT-2 has none): plain is "
                   "'User: ...\\nAssistant:' (stops at '\\nUser:'), chatml is <|im_start|>role ... "
                   "<|im_end|> (stops at '<|im_end|>')")

    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    s.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on the API (repeatable; default: the "
                   "GPT2GEN_API_KEY environment variable, else no key). /health and /metrics stay open")
    s.add_argument("--cors-origins", nargs="+", default=[], metavar="ORIGIN",
                   help="origins browsers may call the API from (e.g. http://localhost:3000, or *)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="larger request bodies get a 413 (default: 1 MiB)")
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    s.add_argument("--no-access-log", action="store_true", help="do not log every request")

    e = p.add_argument_group("engine")
    e.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="sequences decoded together (default: 16)")
    e.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="sequences that may wait for the batch; beyond, 429 (default: 256)")
    e.add_argument("--threads", type=int, metavar="N", help="threads for the engine (default: the cores)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn
    except ImportError:  # (importing this package already checked the other dependencies)
        return _fail(missing_extra("uvicorn"))
    import gpt2gen

    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {args.port}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            gpt2gen.set_num_threads(args.threads)
        env_key = os.environ.get("GPT2GEN_API_KEY")
        config = ServerConfig(
            served_model_name=args.served_model_name or args.model,
            api_keys=tuple(args.api_key or ([env_key] if env_key else [])),
            max_batch=args.max_batch, max_queue=args.max_queue, chat_template=args.chat_template,
            cors_origins=tuple(args.cors_origins), max_body_bytes=args.max_body_bytes)
    except (ValueError, TypeError) as error:
        return _fail(str(error))

    log = logging.getLogger("gpt2gen.server")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(args.log_level.upper())
    if not config.api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it may use it", args.host)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # the port is open: say where (with --port 0, which port)
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                print(f"gpt2gen: serving {config.served_model_name!r} at http://{host}:{port}/v1 "
                      "(/health answers 200 once the model has loaded)", file=sys.stderr, flush=True)

    failures: list = []

    def load():
        return gpt2gen.GPT2.from_pretrained(args.model, args.models_dir, allow_pickle=args.allow_pickle,
                                            dtype=args.dtype)

    def on_load_error(error):
        failures.append(error)
        server.should_exit = True

    app = create_app(load, config, on_load_error=on_load_error)
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   access_log=not args.no_access_log, timeout_graceful_shutdown=5))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot listen, having logged why
        return _fail(f"could not listen on {args.host}:{args.port} (see the message above)")
    if failures:  # in the generation command's words (download advice, pickles)
        from ..cli import error_message

        return _fail(f"the model failed to load: {error_message(failures[0])}")
    return 0


def _fail(message: str) -> int:
    print(f"gpt2gen: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
