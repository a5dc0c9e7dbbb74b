"""Where chunk vectors and their full-text index live, per database.

- SQLite: sqlite-vec's `vec0` table `vec_chunks_<dim>` (partitioned by vector store, cosine
  distance, exact search), made on first use; FTS5 `vector_chunks_fts` (BM25).
- PostgreSQL: the chunk's `embedding` column (float32 bytes), searched exactly with numpy over
  the store's vectors (cached per store until its chunks change); full text with
  `to_tsvector('english', …)` and `ts_rank` (GIN index). pgvector is not used: Debian 12's
  PostgreSQL 15 packages do not ship it (see docs/rag.md).
Vectors are L2-normalized here, so cosine similarity is a dot product.
"""

from __future__ import annotations

import re
import threading
from typing import Protocol

import numpy as np
from sqlalchemy import Connection, bindparam, text

_WORD = re.compile(r"\w+", re.UNICODE)


def normalized(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


class VectorIndex(Protocol):
    def add(self, conn: Connection, store_id: str, ids: list[int], texts: list[str],
            vectors: np.ndarray) -> None: ...

    def remove(self, conn: Connection, ids: list[int]) -> None: ...

    def nearest(self, conn: Connection, store_id: str, query: np.ndarray,
                k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""
        ...

    def matching(self, conn: Connection, store_id: str, query: str, k: int) -> list[int]:
        """Chunk ids whose text matches the query's words, best (BM25 / ts_rank) first."""
        ...


class SqliteIndex:
    def _table(self, conn: Connection, dim: int) -> str:
        name = f"vec_chunks_{dim}"
        conn.execute(text(f"CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING vec0("
                          f"vector_store_id text partition key, "
                          f"embedding float[{dim}] distance_metric=cosine)"))
        return name

    def _tables(self, conn: Connection) -> list[str]:
        return list(conn.scalars(text(
            "SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'vec_chunks_*' "
            "AND name NOT GLOB 'vec_chunks_*_*'")))

    def add(self, conn, store_id, ids, texts, vectors) -> None:
        vectors = normalized(vectors)
        table = self._table(conn, vectors.shape[1])
        conn.execute(text(f"INSERT INTO {table}(rowid, vector_store_id, embedding) "
                          "VALUES (:id, :store, :v)"),
                     [{"id": i, "store": store_id, "v": v.tobytes()}
                      for i, v in zip(ids, vectors, strict=True)])
        conn.execute(text("INSERT INTO vector_chunks_fts(rowid, content, vector_store_id) "
                          "VALUES (:id, :content, :store)"),
                     [{"id": i, "content": t, "store": store_id}
                      for i, t in zip(ids, texts, strict=True)])

    def remove(self, conn, ids) -> None:
        if not ids:
            return
        for table in [*self._tables(conn), "vector_chunks_fts"]:
            conn.execute(text(f"DELETE FROM {table} WHERE rowid IN :ids")
                         .bindparams(bindparam("ids", expanding=True)), {"ids": ids})

    def nearest(self, conn, store_id, query, k) -> list[tuple[int, float]]:
        q = normalized(query.reshape(1, -1))[0]
        table = f"vec_chunks_{q.shape[0]}"
        if table not in self._tables(conn):
            return []
        rows = conn.execute(text(
            f"SELECT rowid, distance FROM {table} WHERE embedding MATCH :q AND k = :k "
            "AND vector_store_id = :store ORDER BY distance"),
            {"q": q.tobytes(), "k": k, "store": store_id})
        return [(int(r[0]), 1.0 - float(r[1])) for r in rows]

    def matching(self, conn, store_id, query, k) -> list[int]:
        words = _WORD.findall(query)
        if not words:
            return []
        expr = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = conn.execute(text(
            "SELECT rowid FROM vector_chunks_fts WHERE vector_chunks_fts MATCH :q "
            "AND vector_store_id = :store ORDER BY bm25(vector_chunks_fts) LIMIT :k"),
            {"q": expr, "store": store_id, "k": k})
        return [int(r[0]) for r in rows]


class PostgresIndex:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, conn, store_id, ids, texts, vectors) -> None:
        vectors = normalized(vectors)
        conn.execute(text("UPDATE vector_chunks SET embedding = :v WHERE id = :id"),
                     [{"id": i, "v": v.tobytes()} for i, v in zip(ids, vectors, strict=True)])

    def remove(self, conn, ids) -> None:
        pass  # the vectors go with their chunk rows

    def _vectors(self, conn, store_id) -> tuple[np.ndarray, np.ndarray]:
        version = tuple(conn.execute(text(
            "SELECT count(*), coalesce(max(id), 0) FROM vector_chunks "
            "WHERE vector_store_id = :s AND embedding IS NOT NULL"), {"s": store_id}).one())
        with self._lock:
            cached = self._cache.get(store_id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        rows = conn.execute(text(
            "SELECT id, embedding FROM vector_chunks WHERE vector_store_id = :s "
            "AND embedding IS NOT NULL ORDER BY id"), {"s": store_id}).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = (np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
                  if rows else np.zeros((0, 0), np.float32))
        with self._lock:
            self._cache[store_id] = (version, ids, matrix)
        return ids, matrix

    def nearest(self, conn, store_id, query, k) -> list[tuple[int, float]]:
        ids, matrix = self._vectors(conn, store_id)
        if len(ids) == 0 or matrix.shape[1] != query.shape[-1]:
            return []
        scores = matrix @ normalized(query.reshape(1, -1))[0]
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def matching(self, conn, store_id, query, k) -> list[int]:
        words = _WORD.findall(query)
        if not words:
            return []
        rows = conn.execute(text(
            "SELECT id FROM vector_chunks, to_tsquery('english', :q) query "
            "WHERE vector_store_id = :s AND to_tsvector('english', content) @@ query "
            "ORDER BY ts_rank(to_tsvector('english', content), query) DESC, id LIMIT :k"),
            {"q": " | ".join(words), "s": store_id, "k": k})
        return [int(r[0]) for r in rows]


def index_for(dialect: str) -> VectorIndex:
    return SqliteIndex() if dialect == "sqlite" else PostgresIndex()
