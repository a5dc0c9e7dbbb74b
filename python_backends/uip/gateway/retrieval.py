"""Retrieval for generation: embedding texts through Triton, ingesting a file into a vector
store (extract, chunk, embed in batches, write), `file_search` over vector stores, and the
prompt, the `file_search_call` item and the `file_citation` annotations built from its hits.

`file_search` is what the Responses API's `file_search` tool, the chat completions
`file_search` extra body and the agent loop's built-in tool call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import ValidationError

from uip.clients.tensors import grpc_input
from uip.core.paths import resolve_artifact
from uip.gateway.documents import Chunking, DocumentError, chunk_text, extract_text
from uip.gateway.errors import ApiError, not_found
from uip.gateway.rag_store import RANKERS, Hit, rag_of
from uip.gateway.schemas import FileSearchOption
from uip.gateway.spec import Rag
from uip.gateway.store import Store, new_id

__all__ = ["Embed", "Hit", "file_search", "ingest", "triton_embedder"]
log = logging.getLogger("uip.gateway")
Embed = Callable[[list[str]], Awaitable[np.ndarray]]
Progress = Callable[[int, int], None]  # (chunks just written, chunks of the file)


def triton_embedder(triton, model: str, timeout_s: float) -> Embed:
    """Texts -> their vectors, one batched request to the Triton embedding model."""
    async def embed(texts: list[str]) -> np.ndarray:
        batch = np.array([[t.encode()] for t in texts], dtype=object)
        result = await triton.infer(model, [grpc_input("text_input", batch)], timeout_s)
        return result.as_numpy("embedding")

    return embed


def gateway_embedder(g) -> Embed:
    return triton_embedder(g.triton, g.spec.rag.embedding_model, g.spec.limits.stream_timeout_s)


@lru_cache(maxsize=4)
def chunk_tokenizer(artifact: str):
    """The artifact's `tokenizers.Tokenizer`, without truncation or padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(resolve_artifact(artifact) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def chunking_of(strategy: dict[str, Any] | None, rag: Rag) -> Chunking:
    """OpenAI's chunking_strategy (auto or static) -> Chunking; 400 naming the bad field."""
    if not strategy or strategy.get("type", "auto") == "auto":
        return Chunking(rag.chunk_tokens, rag.chunk_overlap_tokens)
    if strategy.get("type") != "static" or not isinstance(strategy.get("static"), dict):
        raise ApiError(400, "chunking_strategy must be {'type': 'auto'} or {'type': 'static', "
                       "'static': {...}}", "chunking_strategy")
    static = strategy["static"]
    size = static.get("max_chunk_size_tokens", rag.chunk_tokens)
    overlap = static.get("chunk_overlap_tokens", rag.chunk_overlap_tokens)
    if not isinstance(size, int) or not 100 <= size <= 4096:
        raise ApiError(400, "max_chunk_size_tokens must be an integer from 100 to 4096",
                       "chunking_strategy.static.max_chunk_size_tokens")
    if not isinstance(overlap, int) or not 0 <= overlap <= size // 2:
        raise ApiError(400, "chunk_overlap_tokens must be an integer from 0 to half of "
                       "max_chunk_size_tokens", "chunking_strategy.static.chunk_overlap_tokens")
    return Chunking(size, overlap)


async def ingest(store: Store, embed: Embed, rag: Rag, vector_store_id: str, file_id: str,
                 chunking: Chunking, progress: Progress | None = None) -> dict | None:
    """Chunk, embed and index one file of a vector store; marks it completed, or failed with
    its partial chunks removed. Returns the error (OpenAI's last_error) or None. While one
    batch is written the next one is being embedded."""
    rags = rag_of(store)
    error: dict | None = None
    pending: asyncio.Future | None = None
    try:
        row = await store.run(rags.get_file, file_id)
        data = await store.run(rags.file_content, file_id)
        if row is None or data is None:
            raise DocumentError(f"file {file_id!r} no longer exists")
        text = await asyncio.to_thread(extract_text, row.filename, data)
        chunks = await asyncio.to_thread(chunk_text, text, chunk_tokenizer(rag.tokenizer),
                                         chunking)
        if len(chunks) > rag.max_chunks_per_file:
            raise DocumentError(f"{row.filename}: {len(chunks)} chunks, more than "
                                f"rag.max_chunks_per_file = {rag.max_chunks_per_file}")
        if progress:
            progress(0, len(chunks))
        batches = [chunks[i:i + rag.embed_batch] for i in range(0, len(chunks), rag.embed_batch)]
        if batches:
            pending = asyncio.ensure_future(embed(batches[0]))
        for i, part in enumerate(batches):
            vectors = await pending
            pending = asyncio.ensure_future(embed(batches[i + 1])) if i + 1 < len(batches) \
                else None
            await store.run(rags.add_chunks, vector_store_id, file_id, i * rag.embed_batch,
                            part, vectors)
            if progress:
                progress(len(part), len(chunks))
    except DocumentError as e:
        error = {"code": "invalid_file", "message": str(e)}
    except ApiError as e:
        error = {"code": "server_error", "message": e.message}
    except Exception as e:  # noqa: BLE001 - a bug or a database fault: the file fails
        log.exception("ingesting %s into %s", file_id, vector_store_id)
        error = {"code": "server_error", "message": f"{type(e).__name__}: {e}"}
    finally:
        if pending is not None:
            pending.cancel()
    await store.run(rags.finish, vector_store_id, file_id, error)
    return error


async def file_search(store: Store, vector_store_ids: list[str], query: str,
                      max_num_results: int, *, embed: Embed, ranker: str = "auto",
                      score_threshold: float = 0.0) -> list[Hit]:
    """The best chunks of the vector stores for `query`, best first (hybrid ranking: vector
    similarity fused with full-text rank; `ranker="vector"` for similarity alone)."""
    if not vector_store_ids:
        raise ApiError(400, "give at least one vector store id", "vector_store_ids")
    if ranker not in RANKERS:
        raise ApiError(400, f"ranker must be one of {', '.join(RANKERS)}", "ranker")
    if not query.strip():
        raise ApiError(400, "the query is empty", "query")
    rags = rag_of(store)
    for sid in vector_store_ids:
        if await store.run(rags.get_vector_store, sid) is None:
            raise not_found("vector store", sid, "vector_store_ids")
    vector = (await embed([query]))[0] if ranker != "text" else np.zeros(1, np.float32)
    return await store.run(rags.search, list(vector_store_ids), vector, query,
                           max_num_results, ranker, score_threshold)


async def gateway_file_search(g, vector_store_ids: list[str], query: str,
                              max_num_results: int | None = None, ranker: str = "auto",
                              score_threshold: float = 0.0) -> list[Hit]:
    """`file_search` with the gateway's database, embedding model and limits."""
    rag = g.spec.rag
    k = max_num_results or rag.default_num_results
    if not 1 <= k <= rag.max_num_results:
        raise ApiError(400, f"max_num_results must be 1 to {rag.max_num_results} "
                       "(rag.max_num_results)", "max_num_results")
    if len(vector_store_ids) > rag.max_vector_store_ids:
        raise ApiError(400, f"at most {rag.max_vector_store_ids} vector stores "
                       "(rag.max_vector_store_ids)", "vector_store_ids")
    if g.store is None:
        raise ApiError(400, "file_search needs the gateway's database", "tools")
    return await file_search(g.store, vector_store_ids, query, k, embed=gateway_embedder(g),
                             ranker=ranker, score_threshold=score_threshold)


# ------------------------------------------------------------------- prompt and output


def augmented(messages: list[dict[str, str]], hits: list[Hit], rag: Rag) -> list[dict]:
    """The messages with the last user message replaced by the template holding the hits."""
    at = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if at is None:
        return messages
    sources = "\n".join(rag.source_template.format(n=n, filename=h.filename, file_id=h.file_id,
                                                   text=h.text)
                        for n, h in enumerate(hits, 1)) or "(no sources found)"
    prompt = rag.prompt_template.format(sources=sources, question=messages[at]["content"])
    return [*messages[:at], {"role": "user", "content": prompt}, *messages[at + 1:]]


def last_user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def citations(hits: list[Hit], text: str) -> list[dict[str, Any]]:
    """OpenAI's file_citation annotations: one per cited file, best hit first, placed at the
    end of the answer (the model gives no citation marks of its own)."""
    seen: dict[str, Hit] = {}
    for h in hits:
        seen.setdefault(h.file_id, h)
    return [{"type": "file_citation", "file_id": h.file_id, "filename": h.filename,
             "index": len(text)} for h in seen.values()]


def result_of(h: Hit) -> dict[str, Any]:
    return {"file_id": h.file_id, "filename": h.filename, "score": h.score, "text": h.text,
            "attributes": {**h.attributes, "chunk_index": h.chunk_index,
                           "vector_store_id": h.vector_store_id}}


def call_item(query: str, hits: list[Hit], with_results: bool) -> dict[str, Any]:
    """The Responses API's file_search_call output item; results when the request's
    `include` asks for "file_search_call.results"."""
    return {"type": "file_search_call", "id": new_id("fs"), "status": "completed",
            "queries": [query], "results": [result_of(h) for h in hits] if with_results
            else None}


@dataclass
class Retrieved:
    """What one file_search gave a generation: its query, hits and the augmented messages."""

    query: str
    hits: list[Hit]
    messages: list[dict[str, str]]


def file_search_tools(tools: list[dict[str, Any]] | None) -> FileSearchOption | None:
    """The Responses API's `file_search` tool among `tools` (the others are the agent
    loop's: uip.gateway.agent)."""
    found = None
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "file_search":
            continue
        try:
            found = FileSearchOption.model_validate(tool)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"tools.{i}.{where}: {first['msg']}", f"tools.{i}.{where}") \
                from None
    return found


async def retrieve(g, option: FileSearchOption, messages: list[dict[str, str]]) -> Retrieved:
    """file_search for the last user message; the messages with the template applied."""
    query = last_user_text(messages)
    opts = option.ranking_options or {}
    ranker = opts.get("ranker", "auto")
    threshold = opts.get("score_threshold", 0.0)
    if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ApiError(400, "score_threshold must be a number from 0 to 1",
                       "ranking_options.score_threshold")
    ranker = "hybrid" if ranker in ("auto", "default-2024-11-15") else ranker
    hits = await gateway_file_search(g, option.vector_store_ids, query,
                                     option.max_num_results, ranker, float(threshold))
    return Retrieved(query, hits, augmented(messages, hits, g.spec.rag))
