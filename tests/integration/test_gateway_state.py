"""Stored state through the gateway, on SQLite and on a real PostgreSQL 15: Responses chained
by `previous_response_id` and by `conversation`, streamed events, conversation items, and all
of it surviving a gateway restart. Every answer equals transformers' greedy `generate` on the
whole exchange, so a lost or misordered turn fails."""

from __future__ import annotations

import openai
import pytest
from support.gateway_fixtures import (  # noqa: F401
    DATABASES,
    database_url,
    llm_reference,
    postgres,
    start_gateway,
)

N = 8


@pytest.fixture(scope="module", params=DATABASES)
def gw(request, server, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"gateway-{request.param}")
    proc = start_gateway(server, folder, database_url(request, folder))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_previous_response_id_chains_turns(client, llm_reference):  # noqa: F811
    r1 = client.responses.create(model="llm_bls", input="Hello world",
                                 instructions="Be brief.", max_output_tokens=N)
    first, n_prompt, ids, _ = llm_reference([{"role": "system", "content": "Be brief."},
                                             user("Hello world")], N)
    assert r1.output_text == first and r1.status in ("completed", "incomplete")
    assert r1.usage.input_tokens == n_prompt and r1.usage.output_tokens == len(ids)
    # instructions are not carried over (OpenAI semantics); the earlier turns are
    r2 = client.responses.create(model="llm_bls", input="And then?",
                                 previous_response_id=r1.id, max_output_tokens=N)
    want, *_ = llm_reference([user("Hello world"), assistant(first), user("And then?")], N)
    assert r2.output_text == want and r2.previous_response_id == r1.id
    r3 = client.responses.create(model="llm_bls", input=[user("Why?")],
                                 previous_response_id=r2.id, max_output_tokens=N)
    want3, *_ = llm_reference([user("Hello world"), assistant(first), user("And then?"),
                               assistant(want), user("Why?")], N)
    assert r3.output_text == want3
    assert client.responses.retrieve(r2.id).output_text == want


def test_conversation_holds_the_turns(client, llm_reference):  # noqa: F811
    conv = client.conversations.create(items=[user("Bonjour")], metadata={"topic": "t"})
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "t"}
    r1 = client.responses.create(model="llm_bls", input="Hello world", conversation=conv.id,
                                 max_output_tokens=N)
    first, *_ = llm_reference([user("Bonjour"), user("Hello world")], N)
    assert r1.output_text == first
    r2 = client.responses.create(model="llm_bls", input="More?", conversation=conv.id,
                                 max_output_tokens=N)
    want, *_ = llm_reference([user("Bonjour"), user("Hello world"), assistant(first),
                              user("More?")], N)
    assert r2.output_text == want
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [i.role for i in items] == ["user", "user", "assistant", "user", "assistant"]
    assert items[2].content[0].text == first
    page = client.conversations.items.list(conv.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    added = client.conversations.items.create(conv.id, items=[user("extra")])
    item_id = added.data[0].id
    assert client.conversations.items.retrieve(item_id, conversation_id=conv.id).id == item_id
    client.conversations.items.delete(item_id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(item_id, conversation_id=conv.id)
    client.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="llm_bls", input="x", conversation=conv.id)


def test_streamed_response_events(client, llm_reference):  # noqa: F811
    want, *_ = llm_reference([user("the cache is")], N)
    events = list(client.responses.create(model="llm_bls", input="the cache is",
                                          max_output_tokens=N, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == want
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == want
    assert client.responses.retrieve(final.id).output_text == want


def test_store_false_and_delete(client):
    r = client.responses.create(model="llm_bls", input="Hi", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    kept = client.responses.create(model="llm_bls", input="Hi", max_output_tokens=2)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="llm_bls", input="x", previous_response_id=kept.id)


def test_state_survives_a_gateway_restart(gw, client, llm_reference):  # noqa: F811
    r1 = client.responses.create(model="llm_bls", input="Hello world", max_output_tokens=N)
    conv = client.conversations.create(items=[user("kept")])
    gw.restart()
    again = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)
    assert again.responses.retrieve(r1.id).output_text == r1.output_text
    assert [i.content[0].text for i in again.conversations.items.list(conv.id)] == ["kept"]
    r2 = again.responses.create(model="llm_bls", input="And then?",
                                previous_response_id=r1.id, max_output_tokens=N)
    want, *_ = llm_reference([user("Hello world"), assistant(r1.output_text),
                              user("And then?")], N)
    assert r2.output_text == want
