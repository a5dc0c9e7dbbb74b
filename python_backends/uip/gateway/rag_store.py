"""Files, vector stores, their files and chunks in the gateway's database, and hybrid search
over the chunks (vector similarity fused with full-text rank). Synchronous, like `Store`:
the app runs these in worker threads (`await store.run(...)`)."""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from uip.gateway.store import Store, new_id
from uip.gateway.tables import Chunk, File, VectorStore, VectorStoreFile
from uip.gateway.vector_index import VectorIndex, index_for

RRF_K = 60  # reciprocal rank fusion: score = sum over rankings of 1 / (RRF_K + rank)
RANKERS = ("auto", "default-2024-11-15", "hybrid", "vector", "text")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. `score` is in [0, 1]: cosine similarity for the `vector` ranker,
    else the fused rank score scaled so that first in both rankings is 1."""

    file_id: str
    filename: str
    vector_store_id: str
    chunk_id: int
    chunk_index: int
    text: str
    score: float
    attributes: dict[str, Any] = field(default_factory=dict)


def _page(s: Session, model, q, limit: int, order: str, after: str | None, key):
    """Up to `limit` rows ordered by (created_at, key) after the row whose key is `after`."""
    if after is not None:
        pivot = s.execute(select(model.created_at, key).where(key == after)).first()
        if pivot is not None:
            newer = (model.created_at > pivot[0]) | ((model.created_at == pivot[0]) &
                                                     (key > pivot[1]))
            older = (model.created_at < pivot[0]) | ((model.created_at == pivot[0]) &
                                                     (key < pivot[1]))
            q = q.where(newer if order == "asc" else older)
    if order == "asc":
        q = q.order_by(model.created_at.asc(), key.asc())
    else:
        q = q.order_by(model.created_at.desc(), key.desc())
    rows = list(s.scalars(q.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class RagStore:
    def __init__(self, store: Store):
        self.store = store
        self.index: VectorIndex = index_for(store.engine.dialect.name)

    def session(self) -> Session:
        return self.store.session()

    # ----------------------------------------------------------------------------- files

    def create_file(self, filename: str, purpose: str, data: bytes) -> File:
        row = File(id=new_id("file"), created_at=time.time(), filename=filename,
                   purpose=purpose, bytes=len(data), content=data)
        with self.session() as s, s.begin():
            s.add(row)
        return row

    def get_file(self, file_id: str) -> File | None:
        with self.session() as s:
            return s.get(File, file_id)

    def file_content(self, file_id: str) -> bytes | None:
        with self.session() as s:
            return s.scalar(select(File.content).where(File.id == file_id))

    def list_files(self, purpose: str | None, limit: int, order: str,
                   after: str | None) -> tuple[list[File], bool]:
        with self.session() as s:
            q = select(File)
            if purpose:
                q = q.where(File.purpose == purpose)
            return _page(s, File, q, limit, order, after, File.id)

    def delete_file(self, file_id: str) -> bool:
        """The file, and its chunks in every vector store."""
        with self.session() as s, s.begin():
            if s.get(File, file_id) is None:
                return False
            self._remove_chunks(s, Chunk.file_id == file_id)
            s.execute(delete(VectorStoreFile).where(VectorStoreFile.file_id == file_id))
            s.execute(delete(File).where(File.id == file_id))
        return True

    # --------------------------------------------------------------------- vector stores

    def create_vector_store(self, name: str | None, metadata: dict[str, str]) -> VectorStore:
        now = time.time()
        row = VectorStore(id=new_id("vs"), created_at=now, name=name, meta=metadata,
                          last_active_at=now)
        with self.session() as s, s.begin():
            s.add(row)
        return row

    def get_vector_store(self, store_id: str) -> VectorStore | None:
        with self.session() as s:
            return s.get(VectorStore, store_id)

    def find_vector_store(self, name: str) -> VectorStore | None:
        """The newest vector store of that name."""
        with self.session() as s:
            return s.scalar(select(VectorStore).where(VectorStore.name == name)
                            .order_by(VectorStore.created_at.desc()).limit(1))

    def list_vector_stores(self, limit: int, order: str,
                           after: str | None) -> tuple[list[VectorStore], bool]:
        with self.session() as s:
            return _page(s, VectorStore, select(VectorStore), limit, order, after,
                         VectorStore.id)

    def update_vector_store(self, store_id: str, name: str | None,
                            metadata: dict[str, str] | None) -> VectorStore | None:
        with self.session() as s, s.begin():
            row = s.get(VectorStore, store_id)
            if row is not None:
                if name is not None:
                    row.name = name
                if metadata is not None:
                    row.meta = metadata
            return row

    def delete_vector_store(self, store_id: str) -> bool:
        with self.session() as s, s.begin():
            if s.get(VectorStore, store_id) is None:
                return False
            self._remove_chunks(s, Chunk.vector_store_id == store_id)
            s.execute(delete(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id))
            s.execute(delete(VectorStore).where(VectorStore.id == store_id))
        return True

    def file_counts(self, store_id: str) -> tuple[dict[str, int], int]:
        """OpenAI's file_counts, and the bytes of the store's chunks (usage_bytes)."""
        with self.session() as s:
            rows = s.execute(select(VectorStoreFile.status, func.count(),
                                    func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0))
                             .where(VectorStoreFile.vector_store_id == store_id)
                             .group_by(VectorStoreFile.status)).all()
        counts = {k: 0 for k in ("in_progress", "completed", "failed", "cancelled")}
        used = 0
        for status, n, used_bytes in rows:
            counts[status] = counts.get(status, 0) + n
            used += int(used_bytes)
        counts["total"] = sum(counts.values())
        return counts, used

    # ------------------------------------------------------------------ files of a store

    def attach(self, store_id: str, file_id: str, chunking: dict[str, Any],
               attributes: dict[str, Any], owner: int | None = None
               ) -> tuple[VectorStoreFile, bool]:
        """The store's file row (in_progress when new), and whether it is new. A new row's
        `owner` is the process that will ingest it (default: this one, `os.getpid()`)."""
        with self.session() as s, s.begin():
            row = s.get(VectorStoreFile, (store_id, file_id))
            if row is not None:
                return row, False
            row = VectorStoreFile(vector_store_id=store_id, file_id=file_id,
                                  created_at=time.time(), status="in_progress",
                                  last_error=None, chunking=chunking, attributes=attributes,
                                  usage_bytes=0, owner=os.getpid() if owner is None else owner)
            s.add(row)
            s.execute(update(VectorStore).where(VectorStore.id == store_id)
                      .values(last_active_at=time.time()))
            return row, True

    def get_store_file(self, store_id: str, file_id: str) -> VectorStoreFile | None:
        with self.session() as s:
            return s.get(VectorStoreFile, (store_id, file_id))

    def list_store_files(self, store_id: str, status: str | None, limit: int, order: str,
                         after: str | None) -> tuple[list[VectorStoreFile], bool]:
        with self.session() as s:
            q = select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id)
            if status:
                q = q.where(VectorStoreFile.status == status)
            return _page(s, VectorStoreFile, q, limit, order, after, VectorStoreFile.file_id)

    def detach(self, store_id: str, file_id: str) -> bool:
        with self.session() as s, s.begin():
            self._remove_chunks(s, (Chunk.vector_store_id == store_id) &
                                (Chunk.file_id == file_id))
            return s.execute(delete(VectorStoreFile).where(
                VectorStoreFile.vector_store_id == store_id,
                VectorStoreFile.file_id == file_id)).rowcount > 0

    def finish(self, store_id: str, file_id: str, error: dict[str, str] | None) -> None:
        """Mark an ingestion completed (or failed, its chunks removed)."""
        with self.session() as s, s.begin():
            where = (Chunk.vector_store_id == store_id) & (Chunk.file_id == file_id)
            if error is not None:
                self._remove_chunks(s, where)
            used = s.scalar(select(func.coalesce(func.sum(func.length(Chunk.content)), 0))
                            .where(where))
            s.execute(update(VectorStoreFile).where(
                VectorStoreFile.vector_store_id == store_id,
                VectorStoreFile.file_id == file_id).values(
                    status="failed" if error else "completed", last_error=error,
                    usage_bytes=int(used or 0), owner=None))

    def fail_unfinished(self, owner: int | None = None) -> int:
        """Ingestions cut short: failed, their partial chunks removed. All of them (at start-up,
        before any worker runs: an earlier run stopped during them), or those of the process
        `owner` (a worker of `uip gateway --workers N` that died; its supervisor calls this).
        How many."""
        q = select(VectorStoreFile.vector_store_id, VectorStoreFile.file_id).where(
            VectorStoreFile.status == "in_progress")
        if owner is None:
            message = "the gateway stopped during ingestion"
        else:
            q = q.where(VectorStoreFile.owner == owner)
            message = f"the gateway worker (pid {owner}) stopped during ingestion"
        with self.session() as s:
            rows = s.execute(q).all()
        for store_id, file_id in rows:
            self.finish(store_id, file_id, {"code": "server_error", "message": message})
        return len(rows)

    # ----------------------------------------------------------------------------- chunks

    def add_chunks(self, store_id: str, file_id: str, first_index: int, texts: list[str],
                   vectors: np.ndarray) -> None:
        rows = [{"vector_store_id": store_id, "file_id": file_id, "idx": first_index + i,
                 "content": t} for i, t in enumerate(texts)]
        with self.session() as s, s.begin():
            conn = s.connection()  # Core, not ORM objects: a batch is one multi-row insert
            ids = list(conn.scalars(insert(Chunk).returning(Chunk.id,
                                                            sort_by_parameter_order=True), rows))
            self.index.add(conn, store_id, ids, texts, vectors)

    def _remove_chunks(self, s: Session, where) -> None:
        ids = list(s.scalars(select(Chunk.id).where(where)))
        self.index.remove(s.connection(), ids)
        s.execute(delete(Chunk).where(where))

    def chunk_count(self, store_id: str) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Chunk)
                            .where(Chunk.vector_store_id == store_id))

    # ----------------------------------------------------------------------------- search

    def search(self, store_ids: list[str], vector: np.ndarray, query: str, k: int,
               ranker: str = "auto", score_threshold: float = 0.0) -> list[Hit]:
        """The best `k` chunks of the stores for the query (its vector and its words)."""
        pool = max(4 * k, 40)  # candidates each ranking contributes to the fusion
        scored: dict[int, tuple[float, str]] = {}
        with self.session() as s:
            conn = s.connection()
            for sid in store_ids:
                if ranker == "vector":
                    scored.update({cid: (sim, sid) for cid, sim
                                   in self.index.nearest(conn, sid, vector, k)})
                    continue
                rankings = [self.index.matching(conn, sid, query, pool)]
                if ranker != "text":
                    rankings.append([c for c, _ in self.index.nearest(conn, sid, vector, pool)])
                fused: dict[int, float] = {}
                for ranking in rankings:
                    for rank, cid in enumerate(ranking):
                        fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
                best = len(rankings) / (RRF_K + 1)
                scored.update({cid: (f / best, sid) for cid, f in fused.items()})
            top = sorted(scored.items(), key=lambda kv: (-kv[1][0], kv[0]))
            top = [(cid, sc) for cid, (sc, _) in top if sc >= score_threshold][:k]
            if not top:
                return []
            rows = {c.id: c for c in s.scalars(select(Chunk).where(
                Chunk.id.in_([cid for cid, _ in top])))}
            files = {f.id: f.filename for f in s.execute(select(File.id, File.filename).where(
                File.id.in_({r.file_id for r in rows.values()})))}
            attrs = {(a.vector_store_id, a.file_id): a.attributes for a in s.scalars(
                select(VectorStoreFile).where(VectorStoreFile.vector_store_id.in_(store_ids)))}
        return [Hit(r.file_id, files.get(r.file_id, ""), r.vector_store_id, r.id, r.idx,
                    r.content, round(score, 6), attrs.get((r.vector_store_id, r.file_id), {}))
                for cid, score in top if (r := rows.get(cid)) is not None]


_RAGS: weakref.WeakKeyDictionary[Store, RagStore] = weakref.WeakKeyDictionary()


def rag_of(store: Store) -> RagStore:
    """The store's RagStore (one per Store: PostgreSQL's vector cache lives in it)."""
    rag = _RAGS.get(store)
    if rag is None:
        rag = _RAGS[store] = RagStore(store)
    return rag
