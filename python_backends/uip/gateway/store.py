"""The gateway's database: keys, usage, stored responses, conversations (SQLAlchemy 2).

`UIP_DATABASE_URL` (e.g. `postgresql+psycopg://user@host/db`) or, by default, an SQLite file
`var/gateway.db` at the repository root. `Store.open` runs the Alembic migrations first.
Calls are synchronous; the app runs them in worker threads (`await store.run(fn, ...)`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, delete, event, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from uip.core.paths import PROJECT_ROOT
from uip.gateway.state import Caller
from uip.gateway.tables import ApiKey, Conversation, ConversationItem, StoredResponse, Usage

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
KEY_PREFIX = "uip-"


class StoreError(ValueError):
    """A database URL that cannot be used."""


def default_url() -> str:
    url = os.environ.get("UIP_DATABASE_URL")
    if url:
        return url
    var = PROJECT_ROOT / "var"
    var.mkdir(exist_ok=True)
    return f"sqlite:///{var / 'gateway.db'}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def upgrade(engine: Engine) -> None:
    """Alembic's migrations up to head."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sqlite_module():
    """The DB-API module for SQLite: the standard one when it can load extensions (sqlite-vec),
    else pysqlite3 (a wheel bundling a recent SQLite with extension loading and FTS5): CPython
    builds without `--enable-loadable-sqlite-extensions` (pyenv's default) lack it."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    import pysqlite3.dbapi2

    return pysqlite3.dbapi2


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    import sqlite_vec

    dbapi_conn.enable_load_extension(True)
    sqlite_vec.load(dbapi_conn)
    dbapi_conn.enable_load_extension(False)
    cur = dbapi_conn.cursor()
    # first: the workers of `uip gateway --workers N` write concurrently; a writer waits up
    # to 5 s for another's transaction instead of failing at once
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; no fsync per commit
    cur.close()


class Store:
    # `has_keys` is asked on every request: a "no key yet" answer is kept this long, so a key
    # made by `uip keys create` in another process takes effect within it. Keys are revoked,
    # never deleted (revoking the last key does not open the gateway), so "keys exist" is
    # kept for good.
    NO_KEYS_TTL_S = 1.0

    def __init__(self, engine: Engine):
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._keys_exist = False
        self._no_keys_until = 0.0

    @classmethod
    def open(cls, url: str | None = None, migrate: bool = True) -> Store:
        """The database at `url` (default: `default_url()`), migrated first unless `migrate`
        is false (the workers of `uip gateway --workers N`: their supervisor migrated it)."""
        url = url or default_url()
        try:
            extra = {"module": sqlite_module()} if url.startswith("sqlite") else {}
            engine = create_engine(url, pool_pre_ping=True, **extra)
        except (ArgumentError, ImportError) as e:
            raise StoreError(f"UIP_DATABASE_URL {url!r} cannot be used: {e}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        if migrate:
            upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def session(self) -> Session:
        return self._session()

    # ------------------------------------------------------------------------------ keys

    def create_key(self, name: str, rpm: int | None = None,
                   tpm: int | None = None) -> tuple[str, str]:
        """(key id, the key itself); only its hash is stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(id=new_id("key"), name=name, key_hash=hash_key(key), rpm=rpm, tpm=tpm,
                     created_at=time.time())
        with self.session() as s, s.begin():
            s.add(row)
        self._keys_exist = True
        return row.id, key

    def has_keys(self) -> bool:
        if self._keys_exist:
            return True
        if time.monotonic() < self._no_keys_until:
            return False
        with self.session() as s:
            self._keys_exist = s.scalar(select(func.count()).select_from(ApiKey)) > 0
        self._no_keys_until = time.monotonic() + self.NO_KEYS_TTL_S
        return self._keys_exist

    def keys_known_to_exist(self) -> bool | None:
        """The cached answer of `has_keys` when one holds (no database call), else None."""
        if self._keys_exist:
            return True
        return False if time.monotonic() < self._no_keys_until else None

    def caller_for(self, key: str) -> Caller | None:
        """The caller of a valid key; None for an unknown or revoked one (read on every
        request, uncached: a revoked key is refused from the next request on)."""
        with self.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key),
                                                ApiKey.revoked_at.is_(None)))
        return None if row is None else Caller(row.id, row.name, row.rpm, row.tpm)

    def list_keys(self) -> list[ApiKey]:
        """Every key made, revoked ones included, oldest first (hashes, never keys)."""
        with self.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def revoke_key(self, key_id: str) -> bool | None:
        """Revoke a key by id: True if revoked now, False if it already was, None if no key
        has that id."""
        with self.session() as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is None:
                return None
            if row.revoked_at is not None:
                return False
            row.revoked_at = time.time()
            return True

    # ----------------------------------------------------------------------------- usage

    def add_usages(self, rows: list[tuple]) -> None:
        """Usage rows (key id, model, endpoint, prompt and completion tokens, images), in
        one transaction: one Core insert (a third of the ORM's Python time, which holds the
        GIL that the event loop waits for)."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(insert(Usage), [
                {"created_at": now, "key_id": k, "model": m, "endpoint": e, "prompt_tokens": p,
                 "completion_tokens": c, "images": i} for k, m, e, p, c, i in rows])

    def usage_rows(self, key_id: str | None = None) -> list[Usage]:
        with self.session() as s:
            q = select(Usage).order_by(Usage.id)
            if key_id is not None:
                q = q.where(Usage.key_id == key_id)
            return list(s.scalars(q))

    # ------------------------------------------------------------------------- responses

    def save_response(self, body: dict[str, Any], input_items: list[Any]) -> None:
        with self.session() as s, s.begin():
            s.add(StoredResponse(id=body["id"], created_at=time.time(), body=body,
                                 input_items=input_items,
                                 previous_response_id=body.get("previous_response_id")))

    def get_response(self, rid: str) -> StoredResponse | None:
        with self.session() as s:
            return s.get(StoredResponse, rid)

    def delete_response(self, rid: str) -> bool:
        with self.session() as s, s.begin():
            return s.execute(delete(StoredResponse).where(StoredResponse.id == rid)).rowcount > 0

    def response_chain(self, rid: str, max_depth: int) -> list[StoredResponse] | None:
        """The response and those before it, oldest first; None when `rid` is unknown."""
        chain: list[StoredResponse] = []
        with self.session() as s:
            current: str | None = rid
            while current is not None and len(chain) < max_depth:
                row = s.get(StoredResponse, current)
                if row is None:
                    if not chain:
                        return None
                    break  # an older turn was deleted: the context starts after it
                chain.append(row)
                current = row.previous_response_id
        return chain[::-1]

    # --------------------------------------------------------------------- conversations

    def create_conversation(self, metadata: dict[str, str],
                            items: list[dict[str, Any]]) -> Conversation:
        row = Conversation(id=new_id("conv"), created_at=time.time(), meta=metadata)
        with self.session() as s, s.begin():
            s.add(row)
            s.flush()
            self._add_items(s, row.id, items)
        return row

    def get_conversation(self, cid: str) -> Conversation | None:
        with self.session() as s:
            return s.get(Conversation, cid)

    def update_conversation(self, cid: str, metadata: dict[str, str]) -> Conversation | None:
        with self.session() as s, s.begin():
            row = s.get(Conversation, cid)
            if row is not None:
                row.meta = metadata
            return row

    def delete_conversation(self, cid: str) -> bool:
        with self.session() as s, s.begin():
            s.execute(delete(ConversationItem).where(ConversationItem.conversation_id == cid))
            return s.execute(delete(Conversation).where(Conversation.id == cid)).rowcount > 0

    def add_items(self, cid: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.session() as s, s.begin():
            return self._add_items(s, cid, items)

    @staticmethod
    def _add_items(s: Session, cid: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in items:
            item = {**item, "id": item.get("id") or new_id("msg")}
            s.add(ConversationItem(id=item["id"], conversation_id=cid, item=item,
                                   created_at=time.time()))
            out.append(item)
        return out

    def list_items(self, cid: str, limit: int, order: str = "asc",
                   after: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` items after the item `after`, and whether more follow."""
        with self.session() as s:
            q = select(ConversationItem).where(ConversationItem.conversation_id == cid)
            if after is not None:
                pivot = s.scalar(select(ConversationItem.seq).where(
                    ConversationItem.id == after, ConversationItem.conversation_id == cid))
                if pivot is not None:
                    q = q.where(ConversationItem.seq > pivot if order == "asc"
                                else ConversationItem.seq < pivot)
            seq = ConversationItem.seq
            q = q.order_by(seq.asc() if order == "asc" else seq.desc()).limit(limit + 1)
            rows = list(s.scalars(q))
        return [r.item for r in rows[:limit]], len(rows) > limit

    def get_item(self, cid: str, item_id: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalar(select(ConversationItem).where(
                ConversationItem.id == item_id, ConversationItem.conversation_id == cid))
            return None if row is None else row.item

    def delete_item(self, cid: str, item_id: str) -> bool:
        with self.session() as s, s.begin():
            return s.execute(delete(ConversationItem).where(
                ConversationItem.id == item_id,
                ConversationItem.conversation_id == cid)).rowcount > 0
