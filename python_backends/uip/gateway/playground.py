"""`/playground`: one static page (plain HTML and JS, no build step) that talks to the gateway's
own /v1 API from the browser: chat with streaming, a vector store for file_search with its
citations, image generation."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).parent / "playground" / "index.html"
router = APIRouter()


@router.get("/playground", include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())
