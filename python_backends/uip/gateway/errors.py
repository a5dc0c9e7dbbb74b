"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("uip.gateway")
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 502: "api_error", 503: "service_unavailable",
         504: "timeout_error"}


class ApiError(Exception):
    """An error answered to the client with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    code = what.replace(" ", "_") + "_not_found"
    return ApiError(404, f"{what} {ident!r} not found", param, code)


# The handlers are coroutines: Starlette runs a plain function handler in a worker thread.


async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    message = f"{param}: {msg}" if param else msg
    return ApiError(400, message, param, "invalid_value").response()


async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return ApiError(status, message, headers=dict(exc.headers or {})).response()


async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
    """A bug of the gateway, not of the request: logged, answered in OpenAI's shape."""
    log.exception("unexpected error", exc_info=exc)
    return ApiError(500, f"internal gateway error ({type(exc).__name__})").response()


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
