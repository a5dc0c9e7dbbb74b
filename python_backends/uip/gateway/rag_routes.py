"""`/v1/files` and `/v1/vector_stores` (with their files and search) in OpenAI's shapes.

Attaching a file answers at once with status `in_progress`; the gateway chunks, embeds and
indexes it in the background (the SDK's `create_and_poll` polls the file until it is
`completed` or `failed`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import Field

from uip.gateway.auth import authorize
from uip.gateway.documents import SUPPORTED, extract_text
from uip.gateway.errors import ApiError, not_found
from uip.gateway.rag_store import RagStore, rag_of
from uip.gateway.retrieval import chunking_of, gateway_embedder, gateway_file_search, ingest
from uip.gateway.schemas import _Body
from uip.gateway.state import Caller, Gateway, gateway

router = APIRouter(prefix="/v1")
Order = Query("desc", pattern="^(asc|desc)$")
PURPOSES = ("assistants", "user_data")


def _rag(g: Gateway) -> RagStore:
    return rag_of(g.store)


def _list(data: list[dict], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


# ----------------------------------------------------------------------------- files


def _file(row) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes,
            "created_at": int(row.created_at), "filename": row.filename,
            "purpose": row.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


@router.post("/files")
async def upload_file(file: UploadFile = File(...), purpose: str = Form(...),
                      caller: Caller = Depends(authorize), g: Gateway = Depends(gateway)):
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(PURPOSES)}", "purpose")
    limit = g.spec.rag.max_file_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"the file is larger than {limit} bytes (rag.max_file_bytes)",
                       "file")
    name = (file.filename or "").rsplit("/", 1)[-1]
    if not name:
        raise ApiError(400, "the file needs a name (its extension tells its type)", "file")
    try:  # refuse what cannot be read now, not when it is attached
        await asyncio.to_thread(extract_text, name, data)
    except ValueError as e:
        raise ApiError(400, f"{e} (supported: {', '.join(SUPPORTED)})", "file") from None
    row = await g.store.run(_rag(g).create_file, name, purpose, data)
    return _file(row)


async def _existing_file(g: Gateway, file_id: str, param: str | None = None):
    row = await g.store.run(_rag(g).get_file, file_id)
    if row is None:
        raise not_found("file", file_id, param)
    return row


@router.get("/files")
async def list_files(purpose: str | None = None, limit: int = Query(100, ge=1, le=10000),
                     order: str = Order, after: str | None = None,
                     caller: Caller = Depends(authorize), g: Gateway = Depends(gateway)):
    rows, more = await g.store.run(_rag(g).list_files, purpose, limit, order, after)
    return _list([_file(r) for r in rows], more)


@router.get("/files/{file_id}")
async def get_file(file_id: str, caller: Caller = Depends(authorize),
                   g: Gateway = Depends(gateway)):
    return _file(await _existing_file(g, file_id))


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, caller: Caller = Depends(authorize),
                       g: Gateway = Depends(gateway)):
    data = await g.store.run(_rag(g).file_content, file_id)
    if data is None:
        raise not_found("file", file_id)
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, caller: Caller = Depends(authorize),
                      g: Gateway = Depends(gateway)):
    if not await g.store.run(_rag(g).delete_file, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# --------------------------------------------------------------------- vector stores


class StoreCreate(_Body):
    name: str | None = Field(None, max_length=256)
    file_ids: list[str] = Field([], max_length=500)
    metadata: dict[str, str] | None = None
    chunking_strategy: dict[str, Any] | None = None


class StoreUpdate(_Body):
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class FileAttach(_Body):
    file_id: str = Field(min_length=1)
    attributes: dict[str, str | float | bool] | None = None
    chunking_strategy: dict[str, Any] | None = None


class RankingOptions(_Body):
    ranker: Literal["auto", "default-2024-11-15", "hybrid", "vector", "text"] = "auto"
    score_threshold: float = Field(0.0, ge=0, le=1)


class SearchRequest(_Body):
    query: str | list[str]
    max_num_results: int | None = Field(None, ge=1)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool | None = False
    filters: dict[str, Any] | None = None


async def _vector_store(g: Gateway, row) -> dict[str, Any]:
    counts, used = await g.store.run(_rag(g).file_counts, row.id)
    return {"id": row.id, "object": "vector_store", "created_at": int(row.created_at),
            "name": row.name, "usage_bytes": used, "file_counts": counts,
            "status": "in_progress" if counts["in_progress"] else "completed",
            "expires_after": None, "expires_at": None,
            "last_active_at": int(row.last_active_at), "metadata": row.meta or {}}


async def _existing_store(g: Gateway, store_id: str):
    row = await g.store.run(_rag(g).get_vector_store, store_id)
    if row is None:
        raise not_found("vector store", store_id)
    return row


async def _attach(g: Gateway, store_id: str, file_id: str, strategy: dict | None,
                  attributes: dict | None):
    """The store's file row; a new one starts its ingestion in the background."""
    chunking = chunking_of(strategy, g.spec.rag)
    await _existing_file(g, file_id, "file_id")
    row, new = await g.store.run(_rag(g).attach, store_id, file_id, chunking.strategy(),
                                 attributes or {})
    if new:
        g.background(ingest(g.store, gateway_embedder(g), g.spec.rag, store_id, file_id,
                            chunking))
    return row


@router.post("/vector_stores")
async def create_vector_store(body: StoreCreate, caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    for fid in body.file_ids:
        await _existing_file(g, fid, "file_ids")
    chunking_of(body.chunking_strategy, g.spec.rag)
    row = await g.store.run(_rag(g).create_vector_store, body.name, body.metadata or {})
    for fid in body.file_ids:
        await _attach(g, row.id, fid, body.chunking_strategy, None)
    return await _vector_store(g, row)


@router.get("/vector_stores")
async def list_vector_stores(limit: int = Query(20, ge=1, le=100), order: str = Order,
                             after: str | None = None, caller: Caller = Depends(authorize),
                             g: Gateway = Depends(gateway)):
    rows, more = await g.store.run(_rag(g).list_vector_stores, limit, order, after)
    return _list([await _vector_store(g, r) for r in rows], more)


@router.get("/vector_stores/{store_id}")
async def get_vector_store(store_id: str, caller: Caller = Depends(authorize),
                           g: Gateway = Depends(gateway)):
    return await _vector_store(g, await _existing_store(g, store_id))


@router.post("/vector_stores/{store_id}")
async def update_vector_store(store_id: str, body: StoreUpdate,
                              caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    row = await g.store.run(_rag(g).update_vector_store, store_id, body.name, body.metadata)
    if row is None:
        raise not_found("vector store", store_id)
    return await _vector_store(g, row)


@router.delete("/vector_stores/{store_id}")
async def delete_vector_store(store_id: str, caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    if not await g.store.run(_rag(g).delete_vector_store, store_id):
        raise not_found("vector store", store_id)
    return {"id": store_id, "object": "vector_store.deleted", "deleted": True}


# ------------------------------------------------------------------ files of a store


def _store_file(row) -> dict[str, Any]:
    return {"id": row.file_id, "object": "vector_store.file",
            "created_at": int(row.created_at), "usage_bytes": row.usage_bytes,
            "vector_store_id": row.vector_store_id, "status": row.status,
            "last_error": row.last_error, "chunking_strategy": row.chunking,
            "attributes": row.attributes or {}}


@router.post("/vector_stores/{store_id}/files")
async def attach_file(store_id: str, body: FileAttach, caller: Caller = Depends(authorize),
                      g: Gateway = Depends(gateway)):
    await _existing_store(g, store_id)
    return _store_file(await _attach(g, store_id, body.file_id, body.chunking_strategy,
                                     body.attributes))


@router.get("/vector_stores/{store_id}/files")
async def list_store_files(store_id: str, limit: int = Query(20, ge=1, le=100),
                           order: str = Order, after: str | None = None,
                           filter: Literal["in_progress", "completed", "failed",
                                           "cancelled"] | None = None,
                           caller: Caller = Depends(authorize), g: Gateway = Depends(gateway)):
    await _existing_store(g, store_id)
    rows, more = await g.store.run(_rag(g).list_store_files, store_id, filter, limit, order,
                                   after)
    return _list([_store_file(r) for r in rows], more)


@router.get("/vector_stores/{store_id}/files/{file_id}")
async def get_store_file(store_id: str, file_id: str, caller: Caller = Depends(authorize),
                         g: Gateway = Depends(gateway)):
    row = await g.store.run(_rag(g).get_store_file, store_id, file_id)
    if row is None:
        raise not_found("vector store file", file_id)
    return _store_file(row)


@router.delete("/vector_stores/{store_id}/files/{file_id}")
async def detach_file(store_id: str, file_id: str, caller: Caller = Depends(authorize),
                      g: Gateway = Depends(gateway)):
    if not await g.store.run(_rag(g).detach, store_id, file_id):
        raise not_found("vector store file", file_id)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.post("/vector_stores/{store_id}/search")
async def search(store_id: str, body: SearchRequest, caller: Caller = Depends(authorize),
                 g: Gateway = Depends(gateway)):
    if body.filters:
        raise ApiError(400, "attribute filters are not supported", "filters")
    queries = [body.query] if isinstance(body.query, str) else body.query
    if len(queries) != 1:
        raise ApiError(400, "send exactly one query", "query")
    opts = body.ranking_options or RankingOptions()
    await g.limiter.admit(caller)
    hits = await gateway_file_search(g, [store_id], queries[0], body.max_num_results,
                                     "hybrid" if opts.ranker.startswith(("auto", "default"))
                                     else opts.ranker, opts.score_threshold)
    data = [{"file_id": h.file_id, "filename": h.filename, "score": h.score,
             "attributes": {**h.attributes, "chunk_index": h.chunk_index},
             "content": [{"type": "text", "text": h.text}]} for h in hits]
    return {"object": "vector_store.search_results.page", "search_query": queries,
            "data": data, "has_more": False, "next_page": None}
