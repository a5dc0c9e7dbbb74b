"""Server-Sent Events as OpenAI streams them: `data: {json}` lines, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Send

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any] | str, name: str | None = None) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


def response(events: AsyncIterator[str]) -> StreamingResponse:
    # Starlette cancels `events` when the client disconnects (uvicorn's ASGI 2.3 path), which
    # cancels the Triton stream inside it.
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)


class OpeningStream(StreamingResponse):
    """Events whose status line waits for their first item: the handler returns this at once,
    and the answer is opened inside `events` (Triton's first token awaited, fallbacks tried)
    while FastAPI and Starlette finish around the handler and start listening for the client's
    disconnect. Until the first item an error raised in `events` is answered as any error
    (its status and OpenAI body, by the exception handlers); a client that leaves meanwhile
    cancels it. The first item may be empty: open, nothing to send yet."""

    def __init__(self, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream", headers=HEADERS)

    async def stream_response(self, send: Send) -> None:
        first = await anext(self.body_iterator, "")
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if first:
            await send({"type": "http.response.body", "body": first.encode(self.charset),
                        "more_body": True})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk.encode(self.charset),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
