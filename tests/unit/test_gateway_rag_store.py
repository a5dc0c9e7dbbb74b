"""Files, vector stores and their search in the gateway's database, on SQLite (sqlite-vec +
FTS5) and on a real PostgreSQL 15 (numpy over stored vectors + tsvector), with synthetic
vectors: exact nearest neighbours equal numpy's, full text finds words, hybrid fuses both,
deletions reach the index. Text extraction and token chunking with overlap."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.documents import CHESS, VOLCANO, tiny_pdf
from support.gateway_fixtures import DATABASES, database_url, postgres  # noqa: F401
from tokenizers import Tokenizer, models, pre_tokenizers

from uip.gateway.documents import Chunking, DocumentError, chunk_text, extract_text
from uip.gateway.rag_store import rag_of
from uip.gateway.store import Store
from uip.gateway.vector_index import normalized

DIM = 16


@pytest.fixture(params=DATABASES)
def store(request, tmp_path):
    s = Store.open(database_url(request, tmp_path, "g.db"))
    yield s
    s.close()


def test_extract_text_by_type():
    assert extract_text("a.md", b"# Title\nbody") == "# Title\nbody"
    html = extract_text("c.html", CHESS.encode())
    assert "knight moves in an L shape" in html and "console.log" not in html
    assert "color: red" not in html
    pdf = extract_text("v.pdf", tiny_pdf(VOLCANO))
    assert "magma rises through vents" in pdf and "Volcanoes" in pdf
    with pytest.raises(DocumentError, match="unsupported file type '.exe'"):
        extract_text("x.exe", b"MZ")
    with pytest.raises(DocumentError, match="not a readable PDF"):
        extract_text("broken.pdf", b"%PDF-1.4 nothing")
    with pytest.raises(DocumentError, match="not UTF-8"):
        extract_text("a.txt", b"\xff\xfe\xfa")


def test_chunks_overlap_by_tokens():
    words = [f"w{i}" for i in range(25)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    chunks = chunk_text(" ".join(words), tok, Chunking(10, 3))
    assert chunks[0] == " ".join(words[:10])
    assert chunks[1] == " ".join(words[7:17])  # 3 tokens of overlap
    assert chunks[-1] == "w21 w22 w23 w24" and len(chunks) == 4  # starts 0, 7, 14, 21
    assert chunk_text("   ", tok, Chunking(10, 3)) == []


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return normalized(np.random.default_rng(seed).standard_normal((n, DIM)))


def test_store_search_and_deletes(store):
    rags = rag_of(store)
    vs = rags.create_vector_store("docs", {"team": "a"})
    other = rags.create_vector_store("other", {})
    texts = [f"note {i} about topic{i % 7}" for i in range(60)] + ["zebra crossing rules"]
    vecs = _vectors(len(texts))
    files = [rags.create_file(f"f{j}.txt", "assistants", b"x") for j in range(2)]
    for j, f in enumerate(files):
        rags.attach(vs.id, f.id, {"type": "static"}, {"k": j})
        part = slice(0, 30) if j == 0 else slice(30, len(texts))
        rags.add_chunks(vs.id, f.id, 0, texts[part], vecs[part])
        rags.finish(vs.id, f.id, None)
    stray = rags.create_file("stray.txt", "assistants", b"x")
    rags.attach(other.id, stray.id, {}, {})
    rags.add_chunks(other.id, stray.id, 0, ["zebra elsewhere"], _vectors(1, 9))
    counts, used = rags.file_counts(vs.id)
    assert counts == {"in_progress": 0, "completed": 2, "failed": 0, "cancelled": 0,
                      "total": 2} and used == sum(len(t) for t in texts)

    q = _vectors(1, 5)[0]
    hits = rags.search([vs.id], q, "", 10, "vector")
    want = np.argsort(-(vecs @ q), kind="stable")[:10]
    assert [h.text for h in hits] == [texts[i] for i in want]  # exact, in order
    assert hits[0].score == pytest.approx(float(vecs[want[0]] @ q), abs=1e-5)
    assert {h.vector_store_id for h in hits} == {vs.id}

    words = rags.search([vs.id], q, "zebra", 5, "text")
    assert [h.text for h in words] == ["zebra crossing rules"]  # not the other store's
    assert words[0].file_id == files[1].id and words[0].attributes == {"k": 1}
    hybrid = rags.search([vs.id], vecs[3], "zebra", 3, "hybrid")
    assert {h.text for h in hybrid[:2]} == {texts[3], "zebra crossing rules"}
    assert hybrid[0].score <= 1.0 and hybrid[0].score > hybrid[2].score
    assert rags.search([vs.id], q, "", 5, "vector", score_threshold=1.01) == []

    assert rags.detach(vs.id, files[1].id)
    assert rags.search([vs.id], q, "zebra", 5, "text") == []
    assert all(h.file_id == files[0].id for h in rags.search([vs.id], q, "", 40, "vector"))
    assert rags.delete_file(files[0].id)
    assert rags.search([vs.id], q, "note", 5, "hybrid") == []
    assert rags.chunk_count(vs.id) == 0 and rags.chunk_count(other.id) == 1
    assert rags.delete_vector_store(other.id) and rags.chunk_count(other.id) == 0


def test_unfinished_ingestion_fails_at_start(store):
    rags = rag_of(store)
    vs = rags.create_vector_store(None, {})
    f = rags.create_file("a.txt", "assistants", b"abc")
    row, new = rags.attach(vs.id, f.id, {}, {})
    assert new and row.status == "in_progress"
    assert not rags.attach(vs.id, f.id, {}, {})[1]  # attaching again: the same row
    rags.add_chunks(vs.id, f.id, 0, ["partial"], _vectors(1))
    assert rags.fail_unfinished() == 1
    row = rags.get_store_file(vs.id, f.id)
    assert row.status == "failed" and row.last_error["code"] == "server_error"
    assert rags.chunk_count(vs.id) == 0
    page, more = rags.list_files(None, 1, "desc", None)
    assert [p.id for p in page] == [f.id] and not more


def test_fail_unfinished_of_one_owner(store):
    """A dead worker's ingestions fail (its supervisor asks); the others' go on."""
    rags = rag_of(store)
    vs = rags.create_vector_store(None, {})
    mine, theirs, done = (rags.create_file(f"{n}.txt", "assistants", b"abc")
                          for n in ("mine", "theirs", "done"))
    for f, owner in ((mine, 101), (theirs, 202), (done, 101)):
        row, _ = rags.attach(vs.id, f.id, {}, {}, owner=owner)
        assert row.owner == owner
        rags.add_chunks(vs.id, f.id, 0, ["partial"], _vectors(1))
    rags.finish(vs.id, done.id, None)
    assert rags.get_store_file(vs.id, done.id).owner is None  # finished: no owner
    assert rags.fail_unfinished(owner=303) == 0
    assert rags.fail_unfinished(owner=101) == 1
    row = rags.get_store_file(vs.id, mine.id)
    assert row.status == "failed" and row.owner is None
    assert row.last_error == {"code": "server_error", "message":
                              "the gateway worker (pid 101) stopped during ingestion"}
    assert rags.get_store_file(vs.id, theirs.id).status == "in_progress"
    assert rags.get_store_file(vs.id, done.id).status == "completed"
    assert rags.chunk_count(vs.id) == 2  # the failed one's partial chunk is gone
    assert rags.attach(vs.id, rags.create_file("x.txt", "assistants", b"x").id, {},
                       {})[0].owner == os.getpid()  # default: this process
    assert rags.fail_unfinished() == 2  # at start-up: every unfinished one, whoever owns it
    assert rags.get_store_file(vs.id, theirs.id).last_error["message"] == \
        "the gateway stopped during ingestion"
