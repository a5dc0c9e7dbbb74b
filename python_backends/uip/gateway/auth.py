"""`Authorization: Bearer` -> the calling key, once any key exists (else anonymous)."""

from __future__ import annotations

from fastapi import Depends, Request

from uip.gateway.errors import ApiError
from uip.gateway.state import ANONYMOUS, Caller, Gateway, gateway


async def authorize(request: Request, g: Gateway = Depends(gateway)) -> Caller:
    limit = g.spec.limits.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body over {limit} bytes (limits.max_body_bytes)")
    if g.store is None:
        return ANONYMOUS
    known = g.store.keys_known_to_exist()
    if known is False or (known is None and not await g.store.run(g.store.has_keys)):
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer KEY' "
                       "(keys are made with `uip keys create`)", None, "missing_api_key")
    caller = await g.store.run(g.store.caller_for, token.strip())
    if caller is None:
        raise ApiError(401, "Incorrect API key provided", None, "invalid_api_key")
    return caller
