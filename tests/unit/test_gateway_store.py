"""The gateway's database on SQLite: migrations at open, keys stored as hashes, item pages."""

from __future__ import annotations

import sqlite3

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
    assert db.execute("select version_num from alembic_version").fetchone()[0] == "0002"
