"""Launcher flags (explicit control, restricted admin APIs), the admin key and the watchdog's
reload order, without a server."""

from __future__ import annotations

import pytest

from uip.core.faults import is_unavailable
from uip.core.paths import DEFAULT_REPOSITORY
from uip.launch import admin, watchdog
from uip.launch.server import server_flags, supervised


def test_flags_load_every_model_under_explicit_control_behind_the_key():
    flags = server_flags([], "k")
    assert "--model-control-mode=explicit" in flags and "--load-model=*" in flags
    assert supervised(flags)
    http = [f for f in flags if f.startswith("--http-restricted-api=")]
    assert http == ["--http-restricted-api=model-repository,model-config,shared-memory,"
                    "statistics,trace,logging:uip-admin-key=k"]
    assert any(f.startswith("--grpc-restricted-protocol=") for f in flags)


def test_user_flags_win():
    flags = server_flags(["--model-control-mode=explicit", "--load-model=embedding"], None)
    assert "--load-model=*" not in flags and not any("restricted" in f for f in flags)
    poll = server_flags(["--model-control-mode=poll"], "k")
    assert not supervised(poll) and "--load-model=*" not in poll
    own = server_flags(["--http-restricted-api=trace:x=y"], "k")
    assert [f for f in own if "restricted" in f] == ["--http-restricted-api=trace:x=y"]
    assert "model-config" not in server_flags([], "k", open_apis=("model-config",))[-1]


def test_admin_key_given_env_or_generated(monkeypatch):
    monkeypatch.delenv(admin.KEY_ENV, raising=False)
    assert admin.admin_key("mine") == ("mine", False)
    key, generated = admin.admin_key(None)
    assert generated and len(key) >= 24 and admin.admin_key(None)[0] != key
    monkeypatch.setenv(admin.KEY_ENV, "env")
    assert admin.admin_key(None) == ("env", False)
    assert admin.headers("k", "grpc") == {"triton-grpc-protocol-uip-admin-key": "k"}


def test_ensembles_above_the_engine():
    above = watchdog.ensembles_above(DEFAULT_REPOSITORY)
    assert above["llm_engine"] == ["llm"] and above["llm_preprocess"] == ["llm"]
    assert "embedding" not in above


class FakeApi:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.state = "READY"

    def states(self):
        return {"llm_engine": self.state, "llm": self.state, "embedding": "READY"}

    def load(self, m):
        self.calls.append(("load", m))

    def unload(self, m):
        self.calls.append(("unload", m))


@pytest.fixture
def dog(monkeypatch):
    live = {"llm_engine": {10}, "embedding": {11}}
    monkeypatch.setattr(watchdog, "stub_pids", lambda _pid: {k: set(v) for k, v in live.items()})
    logs: list[str] = []
    d = watchdog.Watchdog(1, FakeApi(), DEFAULT_REPOSITORY, log=logs.append)
    d.check()  # adopts the stubs
    return d, live, logs


def test_the_watchdog_thread_stops_and_joins(dog):
    d, _, _ = dog
    d.interval = 0.01
    d.start()
    d.stop()
    d.join(timeout=5)  # Thread's own _stop() must not be shadowed
    assert not d.is_alive()


def test_a_dead_stub_reloads_its_model_and_the_ensembles_above(dog):
    d, live, logs = dog
    live["llm_engine"] = set()
    d.check()
    assert d.api.calls == [("unload", "llm"), ("unload", "llm_engine"), ("load", "llm_engine"),
                           ("load", "llm")]
    assert "the stub of model 'llm_engine' (pid 10) died" in logs[0]
    assert [m for m, _ in d.reloads] == ["llm_engine"]
    live["llm_engine"] = {12}
    d.check()  # the new stub is adopted, nothing reloaded
    assert len(d.api.calls) == 4


def test_unloaded_models_and_replaced_stubs_are_left_alone(dog):
    d, live, _ = dog
    live["embedding"] = {13}  # reloaded by someone: new stub as the old one went
    d.check()
    d.api.state = "UNAVAILABLE"
    live["llm_engine"] = set()  # unloaded on purpose
    d.check()
    assert d.api.calls == []


def test_a_model_that_keeps_dying_is_left_down(dog):
    d, live, logs = dog
    for pid in range(20, 20 + watchdog.MAX_RELOADS + 1):
        live["llm_engine"] = set()
        d.check()
        live["llm_engine"] = {pid}
        d.check()
    assert len(d.reloads) == watchdog.MAX_RELOADS
    assert "leaving it down" in logs[-1]


@pytest.mark.parametrize(("message", "retry"), [
    ("Stub process 'llm_engine_0_0' is not healthy.", True),
    ("Request for unknown model: 'x' has no available versions", True),
    ("Exceeds maximum queue size", True),
    ("'max_tokens' must be >= 1", False),
])
def test_server_faults_are_told_from_client_errors(message, retry):
    assert is_unavailable(message) is retry
