"""Model id -> the targets to try in order (the id, then its fallbacks), and external APIs.

A fallback is tried when a target is unavailable (503/504, an external API that cannot be
reached or answers 5xx/429) before anything was sent to the client; any other error stands.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from uip.gateway.errors import ApiError
from uip.gateway.spec import External, GatewaySpec, Kind

T = TypeVar("T")
RETRYABLE = (429, 502, 503, 504)


@dataclass(frozen=True)
class Target:
    model_id: str
    triton: str | None = None
    tokenizer: str | None = None
    external: External | None = None
    lora: str | None = None  # a LoRA adapter of the Triton model (id '<model>:<adapter>')


class Router:
    def __init__(self, spec: GatewaySpec):
        self.spec = spec

    def model_ids(self) -> list[str]:
        return [*self.spec.triton, *self.spec.models]

    def targets(self, model_id: str, kind: Kind) -> list[Target]:
        base, _, adapter = model_id.partition(":")
        if adapter and self.spec.kind_of(model_id) is None and base in self.spec.triton \
                and self.spec.triton[base].lora_dir:
            return [replace(t, lora=adapter) for t in self.targets(base, kind)[:1]]
        have = self.spec.kind_of(model_id)
        if have is None:
            raise ApiError(404, f"The model {model_id!r} does not exist; GET /v1/models lists "
                           "them", "model", "model_not_found")
        if have != kind:
            raise ApiError(400, f"model {model_id!r} serves {have}, not {kind}", "model",
                           "wrong_model_kind")
        return [self._target(m) for m in self.spec.chain(model_id)
                if self.spec.kind_of(m) == kind]

    def _target(self, model_id: str) -> Target:
        spec = self.spec
        route = spec.models.get(model_id)
        if route is not None and route.external is not None:
            return Target(model_id, external=route.external)
        name = route.triton if route is not None else model_id
        return Target(model_id, triton=name, tokenizer=spec.triton[name].tokenizer)


async def first_available(targets: list[Target],
                          attempt: Callable[[Target], Awaitable[T]]) -> T:
    """`attempt` on each target in order until one is not unavailable."""
    last: ApiError | None = None
    for target in targets:
        try:
            return await attempt(target)
        except ApiError as e:
            if e.status not in RETRYABLE:
                raise
            last = e
    assert last is not None
    raise last


# ------------------------------------------------------------------------ external APIs


def _request(ext: External, path: str, body: dict[str, Any], model_id: str):
    headers = {"Content-Type": "application/json"}
    if ext.api_key_env:
        key = os.environ.get(ext.api_key_env)
        if not key:
            raise ApiError(503, f"model {model_id!r}: ${ext.api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    url = ext.base_url.rstrip("/") + path
    return url, headers, {**body, "model": ext.model or model_id}


def _upstream_error(resp: httpx.Response, model_id: str, text: str) -> ApiError:
    status = resp.status_code
    try:
        err = json.loads(text).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        message = None
    message = f"{model_id}: {message or text[:300] or resp.reason_phrase}"
    if status >= 500:
        status = 503
    return ApiError(status if status in (400, 401, 403, 404, 422, 429, 503) else 400, message)


async def external_json(client: httpx.AsyncClient, target: Target, path: str,
                        body: dict[str, Any]) -> dict[str, Any]:
    ext = target.external
    assert ext is not None
    url, headers, payload = _request(ext, path, body, target.model_id)
    try:
        resp = await client.post(url, json=payload, headers=headers, timeout=ext.timeout_s)
    except httpx.HTTPError as e:
        raise ApiError(503, f"{target.model_id}: {ext.base_url} unreachable ({e})") from None
    if resp.status_code != 200:
        raise _upstream_error(resp, target.model_id, resp.text)
    try:
        return resp.json()
    except ValueError:
        raise ApiError(503, f"{target.model_id}: the external API answered no JSON") from None


async def external_stream(client: httpx.AsyncClient, target: Target, path: str,
                          body: dict[str, Any]) -> AsyncIterator[str]:
    """The upstream's SSE `data:` payloads, `[DONE]` included."""
    ext = target.external
    assert ext is not None
    url, headers, payload = _request(ext, path, body, target.model_id)
    try:
        async with client.stream("POST", url, json=payload, headers=headers,
                                 timeout=ext.timeout_s) as resp:
            if resp.status_code != 200:
                raise _upstream_error(resp, target.model_id, (await resp.aread()).decode())
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    yield line[5:].strip()
    except httpx.HTTPError as e:
        raise ApiError(503, f"{target.model_id}: {ext.base_url} unreachable ({e})") from None
