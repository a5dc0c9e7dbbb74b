"""Files, vector stores and file_search through the gateway with the `openai` SDK, over the
real tritonserver (`embedding`: all-MiniLM-L6-v2), on SQLite and on a real PostgreSQL 15: a
store made from three files (md, pdf, html) answers each question with the file that holds
its answer first; a Responses `file_search` turn and a chat completion with the `file_search`
extra body cite that file; bad requests are 4xx naming the field."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest
from support.documents import QUESTIONS, files
from support.gateway_fixtures import (  # noqa: F401
    DATABASES,
    database_url,
    postgres,
    start_gateway,
)

from uip.core.paths import artifacts_root
from uip.embedding.encoder import SentenceEncoder

TOOLS = "file_search"


@pytest.fixture(scope="session")
def encoder():
    """The embedding model in-process (the reference of the served vectors), loaded once."""
    return SentenceEncoder(artifacts_root() / "embedding", max_seq_length=256, device="cpu")


@pytest.fixture(scope="module", params=DATABASES)
def gw(request, server, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"gateway-rag-{request.param}")
    proc = start_gateway(server, folder, database_url(request, folder))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def docs(client):
    """The vector store of the three files, and file name -> file id."""
    ids = {name: client.files.create(file=(name, data), purpose="assistants").id
           for name, data in files().items()}
    vs = client.vector_stores.create(name="topics", file_ids=list(ids.values())[:2])
    client.vector_stores.files.create_and_poll(vector_store_id=vs.id,
                                               file_id=ids["chess.html"], poll_interval_ms=200)
    for fid in ids.values():
        client.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=200)
    return vs.id, ids


def test_store_made_from_three_files(client, docs):
    vs_id, ids = docs
    vs = client.vector_stores.retrieve(vs_id)
    assert vs.file_counts.completed == 3 and vs.file_counts.total == 3
    assert vs.status == "completed" and vs.usage_bytes > 0 and vs.name == "topics"
    listed = client.vector_stores.files.list(vs_id)
    assert {f.id for f in listed.data} == set(ids.values())
    assert all(f.status == "completed" and f.last_error is None for f in listed.data)
    assert listed.data[0].chunking_strategy.type == "static"
    assert vs_id in [s.id for s in client.vector_stores.list().data]
    got = client.files.retrieve(ids["bread.md"])
    assert got.filename == "bread.md" and got.bytes == len(files()["bread.md"])


@pytest.mark.parametrize("ranker", ["auto", "vector"])
def test_search_ranks_the_answering_file_first(client, docs, ranker):
    vs_id, ids = docs
    for question, name in QUESTIONS.items():
        page = client.vector_stores.search(vs_id, query=question, max_num_results=5,
                                           ranking_options={"ranker": ranker})
        assert page.data, question
        assert page.data[0].file_id == ids[name], (question, [d.filename for d in page.data])
        assert page.data[0].filename == name and page.data[0].content[0].text
        scores = [d.score for d in page.data]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_vector_scores_are_the_embedding_models_cosine(client, docs, encoder):
    vs_id, ids = docs
    question = next(iter(QUESTIONS))
    top = client.vector_stores.search(vs_id, query=question, max_num_results=1,
                                      ranking_options={"ranker": "vector"}).data[0]
    q, chunk = encoder.encode([question, top.content[0].text])
    assert top.score == pytest.approx(float(np.dot(q, chunk)), abs=1e-4)


def test_responses_file_search_cites_the_file(client, docs):
    vs_id, ids = docs
    question, name = list(QUESTIONS.items())[1]
    r = client.responses.create(model="llm_bls", input=question, max_output_tokens=8,
                                tools=[{"type": TOOLS, "vector_store_ids": [vs_id],
                                        "max_num_results": 3}],
                                include=["file_search_call.results"])
    call, message = r.output
    assert call.type == "file_search_call" and call.queries == [question]
    assert call.results[0].file_id == ids[name] and len(call.results) == 3
    notes = message.content[0].annotations
    assert notes[0].type == "file_citation" and notes[0].file_id == ids[name]
    assert notes[0].filename == name and notes[0].index == len(r.output_text)
    assert client.responses.retrieve(r.id).output[1].content[0].annotations[0].file_id \
        == ids[name]
    # the next turn reads the exchange back without the file_search_call item
    again = client.responses.create(model="llm_bls", input="More?", max_output_tokens=4,
                                    previous_response_id=r.id)
    assert again.status in ("completed", "incomplete")


def test_file_search_is_a_tool_of_the_agent_loop(client, docs):
    """With another tool beside it, file_search is a tool the model calls (here forced): the
    agent runs the search, feeds the passages back, and the answer cites their files."""
    vs_id, ids = docs
    weather = {"type": "function", "name": "weather", "description": "the weather",
               "parameters": {"type": "object",
                              "properties": {"city": {"type": "string", "maxLength": 10}}}}
    r = client.responses.create(
        model="llm_bls", input="What do the files say?", max_output_tokens=160,
        tools=[{"type": TOOLS, "vector_store_ids": [vs_id], "max_num_results": 2}, weather],
        tool_choice={"type": "function", "name": "file_search"})
    kinds = [item.type for item in r.output]
    assert kinds[:2] == ["function_call", "function_call_output"], kinds
    call, result = r.output[0], r.output[1]
    assert call.name == "file_search" and "query" in json.loads(call.arguments)
    assert any(name in result.output for name in ids)  # the passages name their files
    answer = r.output[-1]
    assert answer.type == "message"
    assert {n.file_id for n in answer.content[0].annotations} <= set(ids.values())
    assert answer.content[0].annotations, "the answer cites the files the search found"


def test_streamed_file_search_events(client, docs):
    vs_id, ids = docs
    question, name = list(QUESTIONS.items())[2]
    with client.responses.stream(model="llm_bls", input=question, max_output_tokens=6,
                                 tools=[{"type": TOOLS, "vector_store_ids": [vs_id]}]) as s:
        events = list(s)
    kinds = [e.type for e in events]
    final = events[-1].response  # incomplete: the tiny model stops at max_output_tokens
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.file_search_call.completed" in kinds
    assert "response.output_text.annotation.added" in kinds
    assert final.output[0].type == "file_search_call" and final.output[0].results is None
    assert final.output[1].content[0].annotations[0].file_id == ids[name]


def test_chat_completion_file_search_extra_body(gw, client, docs):
    vs_id, ids = docs
    question, name = list(QUESTIONS.items())[0]
    body = {"model": "llm_bls", "max_tokens": 6, "file_search": {"vector_store_ids": [vs_id]},
            "messages": [{"role": "user", "content": question}]}
    r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=120).json()
    assert r["choices"][0]["message"]["annotations"][0]["file_id"] == ids[name]
    chunks = []
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=120,
                      json={**body, "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]][0]
    assert last["choices"][0]["delta"]["annotations"][0]["file_id"] == ids[name]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])
    assert streamed == r["choices"][0]["message"]["content"]


def test_bad_requests_are_4xx(client, docs):
    vs_id, ids = docs
    with pytest.raises(openai.BadRequestError, match="unsupported file type"):
        client.files.create(file=("x.exe", b"MZ"), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.txt", b"hi"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="file_nope"):
        client.vector_stores.files.create(vector_store_id=vs_id, file_id="file_nope")
    with pytest.raises(openai.NotFoundError, match="vs_nope"):
        client.vector_stores.search("vs_nope", query="x")
    with pytest.raises(openai.BadRequestError, match="max_num_results"):
        client.vector_stores.search(vs_id, query="x", max_num_results=51)
    with pytest.raises(openai.BadRequestError, match="unknown tool type .web_search_preview."):
        client.responses.create(model="llm_bls", input="x",
                                tools=[{"type": "web_search_preview"}])
    with pytest.raises(openai.BadRequestError, match="vector_store_ids"):
        client.responses.create(model="llm_bls", input="x", tools=[{"type": "file_search"}])
    with pytest.raises(openai.BadRequestError, match="chunk_overlap_tokens"):
        client.vector_stores.create(chunking_strategy={
            "type": "static", "static": {"max_chunk_size_tokens": 100,
                                         "chunk_overlap_tokens": 80}})


def test_deleting_a_file_removes_it_from_search(client, docs):
    vs_id, ids = docs
    extra = client.files.create(file=("note.txt", b"Penguins live in Antarctica."),
                                purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=vs_id, file_id=extra.id,
                                               poll_interval_ms=200)
    hits = client.vector_stores.search(vs_id, query="Where do penguins live?").data
    assert hits[0].file_id == extra.id
    assert client.files.delete(extra.id).deleted
    hits = client.vector_stores.search(vs_id, query="Where do penguins live?").data
    assert extra.id not in {h.file_id for h in hits}
    assert client.vector_stores.retrieve(vs_id).file_counts.total == 3
