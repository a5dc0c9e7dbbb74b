"""The gateway's database: migrations at open, keys stored as hashes, item pages (SQLite);
listing and revoking keys on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest
from support.gateway_fixtures import DATABASES, database_url, postgres  # noqa: F401

from uip.gateway.store import Store, hash_key


def test_store_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    store = Store.open(url)
    assert not store.has_keys()
    key_id, key = store.create_key("team", rpm=5)
    assert store.has_keys() and store.caller_for(key).key_id == key_id
    assert store.caller_for(key + "x") is None
    conv = store.create_conversation({}, [{"type": "message", "role": "user", "content": []}
                                          for _ in range(5)])
    first, more = store.list_items(conv.id, 2)
    assert len(first) == 2 and more
    rest, more = store.list_items(conv.id, 10, after=first[-1]["id"])
    assert len(rest) == 3 and not more
    desc, _ = store.list_items(conv.id, 10, order="desc")
    assert [i["id"] for i in desc] == [i["id"] for i in first + rest][::-1]
    store.close()
    Store.open(url).close()  # migrations are idempotent
    db = sqlite3.connect(tmp_path / "g.db")
    hashes = [r[0] for r in db.execute("select key_hash from api_keys")]
    assert hashes == [hash_key(key)] and key not in hashes
    assert db.execute("select version_num from alembic_version").fetchone()[0] == "0004"


@pytest.fixture(params=DATABASES)
def store(request, tmp_path):
    s = Store.open(database_url(request, tmp_path, "keys.db"))
    yield s
    s.close()


def test_migrations_make_the_tables_of_tables_py(store):
    """Every table and column of uip.gateway.tables exists once the migrations ran, and no
    migrated column is missing from it (a new column needs both, and a revision)."""
    from sqlalchemy import inspect

    from uip.gateway.tables import Base

    db = inspect(store.engine)
    for table in Base.metadata.sorted_tables:
        migrated = {c["name"] for c in db.get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name


def test_list_and_revoke_keys(store):
    a_id, a = store.create_key("a", rpm=3)
    b_id, b = store.create_key("b", tpm=9)
    listed = store.list_keys()
    assert [(k.id, k.name, k.rpm, k.tpm, k.revoked_at) for k in listed] == [
        (a_id, "a", 3, None, None), (b_id, "b", None, 9, None)]
    assert store.revoke_key(a_id) is True
    assert store.caller_for(a) is None and store.caller_for(b).key_id == b_id
    assert store.revoke_key(a_id) is False and store.revoke_key("key_none") is None
    assert [k.revoked_at is not None for k in store.list_keys()] == [True, False]
    store.revoke_key(b_id)
    assert store.has_keys()  # revoking every key does not open the gateway
