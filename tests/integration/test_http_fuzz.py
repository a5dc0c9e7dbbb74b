"""HTTP fuzz of the /v2 routes (boofuzz, uip.clients.http_fuzz) against the session server:
the server stays live and ready, no stub dies, no model is reloaded, every model still serves,
and the only 5xx answers are Triton's own frontend's (malformed JSON, `infer` on a
decoupled model) (README, known limits)."""

from __future__ import annotations

from conftest import live_stubs
from support.calls import PUBLIC, call

from uip.clients.http_fuzz import frontend_error, fuzz

CASES_PER_FIELD = 100  # `uip fuzz --cases-per-field 0` runs every mutation


def test_http_fuzz_leaves_the_server_healthy(server):
    stubs, reloads = live_stubs(server), len(server.watchdog.reloads)
    host, _, port = server.http_url.rpartition(":")
    report = fuzz(host, int(port), [*PUBLIC, "llm_engine"], CASES_PER_FIELD, recv_timeout_s=0.3)
    print(report.table())
    assert report.cases >= 4 * CASES_PER_FIELD
    for fuzzed in ("path", "body"):  # well-formed HTTP: the server answered (evhtp closes the
        # connection without an answer on a malformed request line or header)
        answered = sum(n for (f, s), n in report.by_field.items() if f == fuzzed and s != "none")
        assert answered > CASES_PER_FIELD // 2, report.table()
    ours = [e for e in report.server_errors if not frontend_error(e[2])]
    assert not ours, ours[:5]
    assert server.ready()
    assert live_stubs(server) == stubs
    assert len(server.watchdog.reloads) == reloads
    for model in PUBLIC:
        call(server.grpc_url, model)
