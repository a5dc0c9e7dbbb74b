"""uip.core.keyed_workers: per-key order, merged batches, keys in parallel, errors, close."""

import threading
import time

import pytest

from uip.core.keyed_workers import KeyedWorkers


def test_each_keys_items_arrive_in_order_and_queued_ones_together():
    seen: dict[str, list[list[int]]] = {}
    gate = threading.Event()

    def handle(key, items):
        gate.wait(5)
        seen.setdefault(key, []).append(items)

    pool = KeyedWorkers(2, handle)
    for i in range(50):
        for key in ("a", "b", "c"):
            pool.submit(key, i)
    gate.set()
    pool.close()
    for key in ("a", "b", "c"):
        assert [i for batch in seen[key] for i in batch] == list(range(50))
        assert len(seen[key]) < 50  # what queued while a call ran came in one call


def test_a_slow_key_does_not_hold_up_a_key_on_another_thread():
    done, release = [], threading.Event()
    keys = ["k0", "k1", "k2", "k3"]
    pool = KeyedWorkers(4, lambda key, items: (release.wait(5) if key == "slow" else None,
                                               done.append(key)))
    slow_worker = hash("slow") % 4
    others = [k for k in keys if hash(k) % 4 != slow_worker]
    assert others, "test keys all hash to the slow key's thread"
    pool.submit("slow", 0)
    for k in others:
        pool.submit(k, 0)
    deadline = time.monotonic() + 5
    while len(done) < len(others) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(done) == sorted(others)  # served while "slow" still waits
    release.set()
    pool.close()
    assert "slow" in done


def test_errors_go_to_on_error_and_the_thread_goes_on():
    errors, ok = [], []

    def handle(key, items):
        if key == "bad":
            raise RuntimeError("boom")
        ok.append(key)

    pool = KeyedWorkers(1, handle, on_error=lambda key, exc: errors.append((key, str(exc))))
    pool.submit("bad", 1)
    pool.submit("good", 1)
    pool.close()
    assert errors == [("bad", "boom")] and ok == ["good"]


def test_no_threads_handles_inline_and_raises():
    got = []

    def handle(key, items):
        if key == "bad":
            raise ValueError("x")
        got.append((key, items))

    pool = KeyedWorkers(0, handle)
    pool.submit("k", 1)
    assert got == [("k", [1])] and pool.threads == 0
    with pytest.raises(ValueError):
        pool.submit("bad", 2)
    with pytest.raises(ValueError, match=">= 0"):
        KeyedWorkers(-1, handle)
