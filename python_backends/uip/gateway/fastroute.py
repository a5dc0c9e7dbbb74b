"""The hot POST routes (chat and text completions) answered without FastAPI's per-request
machinery (dependency solving, its route matching and body handling: most of the ~0.6 ms
between a request reaching the app and its handler running, measured on a 2-core box).

FastAPI still declares these routes (the OpenAPI schema, the handler functions); a Starlette
route registered before them answers them in FastAPI's own order with FastAPI's own body
field: the body read and, for a JSON content type, parsed (a decode error is a 400 before
anything else); `authorize` (413, 401); the body validated by the route's field (the same
errors, `body` in front of each loc); the handler called with (body, caller, gateway).
`install` refuses a route whose signature is not exactly that, so a dependency added to one
of them later cannot be skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from uip.gateway.auth import authorize
from uip.gateway.state import gateway

_MISSING = object()


def install(app: FastAPI, routes: list[APIRoute]) -> None:
    """A fast route in front of each of `routes` (call before including their router)."""
    for route in routes:
        _check(route)
        app.add_route(route.path, _handler(route), methods=["POST"], include_in_schema=False)


def _check(route: APIRoute) -> None:
    d = route.dependant
    calls = [sub.call for sub in d.dependencies]
    if (calls != [authorize, gateway] or route.body_field is None or len(d.body_params) != 1
            or d.path_params or d.query_params or d.header_params or d.cookie_params
            or route.methods != {"POST"}):
        raise TypeError(f"{route.path}: a fast route needs handler(body, caller=Depends("
                        "authorize), g=Depends(gateway)) and nothing else")


def _handler(route: APIRoute) -> Callable:
    field, endpoint = route.body_field, route.endpoint

    async def handle(request: Request) -> Response:
        body = await _json_body(request)
        g = request.app.state.gateway
        caller = await authorize(request, g)
        if body is _MISSING:
            errors = [{"type": "missing", "loc": ("body",), "msg": "Field required",
                       "input": None}]
        else:
            value, errors = field.validate(body, {}, loc=("body",))
        if errors:
            raise RequestValidationError(errors, body=None if body is _MISSING else body)
        answer = await endpoint(value, caller, g)
        return answer if isinstance(answer, Response) else JSONResponse(answer)

    return handle


async def _json_body(request: Request):
    """As FastAPI reads a JSON body: parsed when the content type is JSON, else the bytes
    (which then fail validation); `_MISSING` when empty."""
    raw = await request.body()
    if not raw:
        return _MISSING
    ctype = request.headers.get("content-type")
    if not ctype:
        return raw
    main, _, sub = ctype.partition(";")[0].strip().lower().partition("/")
    if main != "application" or not (sub == "json" or sub.endswith("+json")):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
              "input": {}, "ctx": {"error": e.msg}}], body=e.doc) from e
    except Exception as e:  # noqa: BLE001 - as FastAPI: not decodable at all
        raise HTTPException(400, "There was an error parsing the body") from e
