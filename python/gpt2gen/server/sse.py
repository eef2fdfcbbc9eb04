"""Server-Sent Events as OpenAI sends them, and cancelling generations whose client has gone.

A stream is ``data: {json}\\n\\n`` events ending with ``data: [DONE]\\n\\n``. Both the streaming
and the plain responses watch the connection: when the client disconnects, ``on_disconnect``
runs at once (it cancels the engine requests, which free their slots within one engine step)
rather than when the next piece of text fails to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Callable

from starlette.responses import Response

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    # allow_nan=False: a NaN or infinity is a bug to surface, never invalid JSON on the wire
    return b"data: " + json.dumps(payload, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":")).encode("utf-8") + b"\n\n"


async def _wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def cancel_on_disconnect(receive, on_disconnect: Callable[[], None]):
    """Runs ``on_disconnect()`` if the client disconnects while the block runs.

    Call it once the request body has been read: from then on the ASGI server's ``receive``
    only returns to report the disconnect.
    """
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    watcher.add_done_callback(lambda task: task.cancelled() or task.exception() or on_disconnect())
    try:
        yield watcher
    finally:
        watcher.cancel()


class EventStream(Response):
    """A ``text/event-stream`` response over ``events`` (an async iterator of bytes)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None], headers=None):
        # No Response.__init__: it would render an empty body and declare Content-Length: 0.
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self._events, self._on_disconnect = events, on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        async with cancel_on_disconnect(receive, self._on_disconnect) as gone:
            try:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                async for chunk in self._events:
                    if gone.done():
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the connection broke mid-send (ASGI servers report it so)
                self._on_disconnect()
            finally:
                await self._events.aclose()
