"""`uip gateway --workers 2` over the real tritonserver: connections are spread over both
worker processes (each binds the port with SO_REUSEPORT), both write usage rows to one SQLite
database, a key's rpm and tpm hold across the workers (the supervisor keeps the window), and
streaming and the disconnect that frees the engine slot work on each worker; a file ingestion
whose worker is killed fails at once (SQLite and PostgreSQL), and a replacement worker serves.

Which worker holds a connection is read from the workers' sockets (psutil), matched by the
client's local port; an httpx client keeps its connection, so later requests stay on it.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
from conftest import poll
from support.gateway_fixtures import (  # noqa: F401
    DATABASES,
    database_url,
    engine_idle,
    make_key,
    metric,
    postgres,
    start_gateway,
)

from uip.gateway.rag_store import rag_of
from uip.gateway.store import Store
from uip.gateway.workers import STARTING_S

MESSAGES = [{"role": "user", "content": "Hello world"}]
CHAT = {"model": "llm_bls", "messages": MESSAGES, "max_tokens": 4}


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-workers")
    proc = start_gateway(server, folder, f"sqlite:///{folder / 'workers.db'}", workers=2)
    yield proc
    proc.stop()


@pytest.fixture
def keyed_gw(server, tmp_path):
    """A gateway of its own: once a key exists, every request needs one."""
    proc = start_gateway(server, tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", workers=2)
    yield proc
    proc.stop()


def client_per_worker(gw, tries: int = 40) -> dict[int, httpx.Client]:
    """worker pid -> an httpx client whose connection that worker holds (new clients until
    each worker has one)."""
    held: dict[int, httpx.Client] = {}
    for _ in range(tries):
        c = httpx.Client(base_url=gw.base_url, timeout=60)
        r = c.get(f"http://127.0.0.1:{gw.port}/health")
        port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
        worker = poll(lambda port=port: gw.worker_of(port), bool)
        if worker in held:
            c.close()
        else:
            held[worker] = c
        if len(held) == gw.workers:
            return held
    raise AssertionError(f"{tries} connections, all on workers {sorted(held)}")


def test_both_workers_serve_and_write_usage(gw):
    assert len(gw.worker_pids()) == 2
    store = Store.open(gw.database_url)
    before = len(store.usage_rows())
    clients = [openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=60)
               for _ in range(16)]  # a connection each
    with ThreadPoolExecutor(8) as pool:  # concurrent: both workers write usage at once
        answers = list(pool.map(lambda c: c.chat.completions.create(**CHAT), clients))
    assert all(a.choices[0].message.content for a in answers)
    # P(16 connections hashed to one worker) = 2 * 2**-16
    assert gw.serving_workers() == gw.worker_pids(), "one worker got every connection"
    rows = poll(lambda: store.usage_rows()[before:], lambda r: len(r) >= 16)
    assert len(rows) == 16 and all(r.completion_tokens > 0 for r in rows)
    store.close()
    for c in clients:
        c.close()


def _worker_of(gw, response: httpx.Response) -> int | None:
    return gw.worker_of(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_stream_and_disconnect_on_each_worker(server, gw):
    texts = []
    for worker, http in client_per_worker(gw).items():
        c = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0,
                          http_client=http)  # its connection: that worker
        stream = c.chat.completions.create(**CHAT, stream=True)
        assert _worker_of(gw, stream.response) == worker
        chunks = list(stream)
        texts.append("".join(ch.choices[0].delta.content or "" for ch in chunks
                             if ch.choices))
        assert chunks[0].choices[0].delta.role == "assistant"
        http.close()
    assert texts[0] and texts[0] == texts[1]  # greedy: the same text on either worker

    for worker, http in client_per_worker(gw).items():
        assert engine_idle(server, 10), "requests of earlier tests still run"
        tokens_before = metric(server, "uip_llm_tokens_generated_total")
        body = {**CHAT, "max_tokens": 1000, "stream": True}
        with http.stream("POST", "/chat/completions", json=body) as r:
            assert _worker_of(gw, r) == worker
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            t0 = time.monotonic()
            while metric(server, "uip_llm_active_sequences") < 1:
                assert time.monotonic() - t0 < 3, "the stream is not in the active gauge"
                time.sleep(0.02)
        http.close()  # hung up: the worker cancels its gRPC stream, llm_bls frees the slot
        assert engine_idle(server, 5), f"worker {worker}: the engine still runs the request"
        generated = metric(server, "uip_llm_tokens_generated_total") - tokens_before
        assert generated < 500, f"worker {worker}: {generated} tokens, not cancelled"


def test_rate_limits_hold_across_workers(keyed_gw):
    gw = keyed_gw
    key = make_key(gw, "team-a", "--rpm", "3")
    tkey = make_key(gw, "team-b", "--tpm", "5")
    time.sleep(Store.NO_KEYS_TTL_S)  # the workers' "no key yet" answers expire
    a, b = client_per_worker(gw).values()

    def chat(http: httpx.Client, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return http.post("/chat/completions", json=CHAT, headers=headers)

    assert chat(a).status_code == chat(b).status_code == 401  # keys exist: on every worker
    assert [chat(a, key).status_code for _ in range(3)] == [200, 200, 200]
    for http in (b, a):  # over its rpm on the worker that served none of the three too
        r = chat(http, key)
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "3 requests per minute" in error["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60

    assert chat(b, tkey).status_code == 200  # spends more than 5 tokens (prompt + completion)
    time.sleep(0.2)  # its tokens reach the window just after its response
    r = chat(a, tkey)
    assert r.status_code == 429 and "5 tokens per minute" in r.json()["error"]["message"]
    a.close()
    b.close()


@pytest.fixture(params=DATABASES)
def rag_gw(request, server, tmp_path):
    proc = start_gateway(server, tmp_path, database_url(request, tmp_path), workers=2)
    yield proc
    proc.stop()


def big_text(paragraphs: int = 1200) -> bytes:
    """About 260 chunks of the default chunking (200 tokens, 50 overlap): 9 embedding batches,
    10-20 s of ingestion on a CPU (the test kills its worker once the first batch is in)."""
    return "\n\n".join(f"Paragraph {i}: the {i % 7}th lighthouse keeper logged tide {i * 3} "
                       f"and wind {i % 11} knots before the ferry number {i % 13} left the "
                       f"harbour with {i % 17} crates of apples and {i % 5} goats."
                       for i in range(paragraphs)).encode()


def test_ingestion_fails_when_its_worker_is_killed(rag_gw):
    gw = rag_gw
    store = Store.open(gw.database_url, migrate=False)
    rags = rag_of(store)
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=60)
    f = client.files.create(file=("harbour.txt", big_text()), purpose="assistants")
    vs = client.vector_stores.create(name="harbour")
    # a worker that exits in its first STARTING_S stops the gateway: let both grow older
    before = gw.worker_pids()
    newest = max(psutil.Process(p).create_time() for p in before)
    time.sleep(max(0.0, newest + STARTING_S + 1 - time.time()))
    attached = client.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id)
    assert attached.status == "in_progress"
    owner = rags.get_store_file(vs.id, f.id).owner
    assert owner in before
    # under way: its first chunks are in the store
    poll(lambda: rags.chunk_count(vs.id), bool, timeout=60, interval=0.02)
    os.kill(owner, signal.SIGKILL)
    t0 = time.monotonic()
    row = poll(lambda: rags.get_store_file(vs.id, f.id), lambda r: r.status != "in_progress",
               timeout=5, interval=0.05)
    failed_after = time.monotonic() - t0
    assert row.status == "failed", "the ingestion completed before its worker was killed"
    assert row.owner is None and rags.chunk_count(vs.id) == 0  # partial chunks removed
    client.close()  # its connection may be the dead worker's
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)
    got = client.vector_stores.files.retrieve(f.id, vector_store_id=vs.id)
    assert got.status == "failed" and got.last_error.code == "server_error"
    assert got.last_error.message == f"the gateway worker (pid {owner}) stopped during ingestion"
    assert client.vector_stores.retrieve(vs.id).file_counts.failed == 1
    assert failed_after < 5

    pids = poll(gw.worker_pids, lambda p: len(p) == 2 and owner not in p, timeout=60)
    assert gw.proc.poll() is None  # the supervisor goes on
    (new,) = pids - before
    held = client_per_worker(gw)
    replacement = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0,
                                http_client=held[new])
    assert replacement.chat.completions.create(**CHAT).choices[0].message.content
    assert replacement.files.retrieve(f.id).filename == "harbour.txt"
    for http in held.values():
        http.close()

    client.vector_stores.files.delete(f.id, vector_store_id=vs.id)
    done = client.vector_stores.files.create_and_poll(vector_store_id=vs.id, file_id=f.id,
                                                      poll_interval_ms=200)
    assert done.status == "completed" and done.last_error is None
    assert rags.chunk_count(vs.id) > 100 and rags.get_store_file(vs.id, f.id).owner is None
    client.close()
    store.close()
