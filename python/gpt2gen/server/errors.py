"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Handlers raise ``APIError``; ``install`` turns it, FastAPI's own errors (unknown route, wrong
method) and anything unexpected into that JSON, so no client ever sees an HTML page or a bare
traceback.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("gpt2gen.server")

# OpenAI's error types by status (the SDKs map the status to an exception class; the type is
# what their messages show).
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def invalid(param: Optional[str], message: str, code: Optional[str] = "invalid_value") -> APIError:
    """A 400 for one request field."""
    return APIError(400, message, param=param, code=code)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            message, code = f"Invalid URL ({request.method} {request.url.path})", "unknown_url"
        elif error.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(error.detail), None
        return APIError(error.status_code, message, code=code, headers=getattr(error, "headers", None)).response()

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, error: ClientDisconnect):
        # the client left while sending its body: nobody reads the answer (nginx's "499")
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # A bug, not bad input (every bad input is an APIError): say so in OpenAI's shape and log it.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "The server had an error while processing your request.",
                        code="internal_error").response()
