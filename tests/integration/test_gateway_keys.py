"""API keys and limits: open until a key exists, then 401 without a valid key; rpm and tpm
over the limit give 429 with Retry-After; one usage row per request matching its `usage`."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai
import pytest
from conftest import poll
from support.gateway_fixtures import make_key, start_gateway

from uip.gateway.store import Store

MESSAGES = [{"role": "user", "content": "Hello world"}]


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-keys")
    proc = start_gateway(server, folder, f"sqlite:///{folder / 'keys.db'}")
    yield proc
    proc.stop()


def client(gw, key: str | None):
    return openai.OpenAI(base_url=gw.base_url, api_key=key or "none", max_retries=0,
                         timeout=60)


def chat(c: openai.OpenAI, **kw):
    return c.chat.completions.create(model="llm_bls", messages=MESSAGES, max_tokens=4, **kw)


def test_keys_rate_limits_and_usage(gw):
    chat(client(gw, None))  # no key exists yet: open
    key = make_key(gw, "team-a", "--rpm", "3")
    store = Store.open(gw.database_url)
    assert poll(store.usage_rows, bool)[-1].key_id is None
    time.sleep(Store.NO_KEYS_TTL_S)  # the gateway's "no key yet" answer expires
    key_id = store.caller_for(key).key_id
    assert store.caller_for(key).rpm == 3
    with pytest.raises(openai.AuthenticationError):
        chat(client(gw, None))
    with pytest.raises(openai.AuthenticationError):
        chat(client(gw, "uip-wrong"))
    r = httpx.get(f"{gw.base_url}/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

    ok = client(gw, key)
    answers = [chat(ok), chat(ok, stream=True, stream_options={"include_usage": True})]
    answers[1] = [c for c in answers[1]][-1]
    emb = ok.embeddings.create(model="embedding", input="hi", encoding_format="float")
    with pytest.raises(openai.RateLimitError) as e:
        chat(ok)
    retry = int(e.value.response.headers["Retry-After"])
    assert 1 <= retry <= 60

    # usage rows are written just after each response
    rows = poll(lambda: store.usage_rows(key_id), lambda r: len(r) >= 3)
    assert len(rows) == 3
    for row, answer in zip(rows[:2], answers, strict=True):
        assert (row.model, row.endpoint) == ("llm_bls", "/chat/completions")
        assert row.prompt_tokens == answer.usage.prompt_tokens
        assert row.completion_tokens == answer.usage.completion_tokens
    assert rows[2].endpoint == "/embeddings"
    assert rows[2].prompt_tokens == emb.usage.prompt_tokens > 0

    # tokens per minute: the first request spends them, the next one waits
    tkey = make_key(gw, "team-b", "--tpm", "5")
    tc = client(gw, tkey)
    chat(tc)
    with pytest.raises(openai.RateLimitError):
        chat(tc)
    image_key = make_key(gw, "team-c")
    ic = client(gw, image_key)
    ic.images.generate(model="stable_diffusion", prompt="a castle", size="64x64",
                       extra_body={"steps": 2, "seed": 1})
    image_id = store.caller_for(image_key).key_id
    rows = poll(lambda: store.usage_rows(image_id), bool)
    assert [(r.endpoint, r.images) for r in rows] == [("/images/generations", 1)]
    store.close()


def keys_cli(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from uip.cli import main; main()", "keys",
                           *args], capture_output=True, text=True,
                          env={"UIP_DATABASE_URL": gw.database_url, "PATH": "/usr/bin:/bin"})


def test_list_and_revoke_keys(gw):
    key = make_key(gw, "leaving", "--rpm", "100")
    other = make_key(gw, "staying")
    time.sleep(Store.NO_KEYS_TTL_S)  # in case no key existed before this test
    c = client(gw, key)
    chat(c)
    listed = keys_cli(gw, "list")
    assert listed.returncode == 0 and key not in listed.stdout and other not in listed.stdout
    rows = {line.split("\t")[1]: line.split("\t") for line in listed.stdout.splitlines()[1:]}
    key_id = rows["leaving"][0]
    assert rows["leaving"][2:4] == ["100", "-"] and rows["leaving"][5] == "-"

    revoked = keys_cli(gw, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):  # refused from the next request on
        chat(c)
    chat(client(gw, other))  # the others still work
    again = keys_cli(gw, "list").stdout
    line = next(ln for ln in again.splitlines() if ln.startswith(key_id))
    assert line.split("\t")[5] != "-"
    assert keys_cli(gw, "revoke", key_id).returncode == 0  # already revoked: said so
    missing = keys_cli(gw, "revoke", "key_nope")
    assert missing.returncode == 1 and "key_nope" in missing.stderr
