"""The request-body limit: a 413 in OpenAI's shape before an oversized body is buffered."""

from __future__ import annotations

from .errors import APIError


class BodyTooLarge(Exception):
    pass


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server accepts ({limit} bytes)",
                    code="request_too_large")


class BodySizeLimit:
    """ASGI middleware: refuses a declared Content-Length over the limit at once, and a body
    sent in chunks as soon as it passes the limit (``BodyTooLarge``, handled as a 413)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None  # uvicorn refuses a malformed length before we get here
                if declared is not None and declared > self.max_bytes:
                    return await too_large(self.max_bytes).response()(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)
