"""Server-Sent Events as OpenAI streams them: `data: {json}` lines, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any] | str, name: str | None = None) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


def response(events: AsyncIterator[str]) -> StreamingResponse:
    # Starlette cancels `events` when the client disconnects (uvicorn's ASGI 2.3 path), which
    # cancels the Triton stream inside it.
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)
