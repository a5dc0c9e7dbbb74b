"""StepGate: concurrent sampling loops line their UNet calls up (uip.sd.gate)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest

from uip.sd.gate import SLOTS, StepGate, shape_key, sweep


@pytest.fixture
def key(tmp_path, request):
    return dict(key=f"test-{request.node.name}", folder=tmp_path)


def test_alone_never_waits(key):
    g = StepGate(**key)
    k = shape_key((4, 8, 8))
    g.start_loop()
    for _ in range(5):
        assert g.wait(k) < 0.01
        g.begin(k)
        g.end()
    g.close()


def test_waits_for_an_earlier_call_then_joins_the_next_cohort(key):
    a, b = StepGate(**key), StepGate(**key)
    assert a.slot != b.slot
    k = shape_key((4, 8, 8))
    a.start_loop()
    a.wait(k)
    a.begin(k)  # A's call is in flight
    b.start_loop()
    released = threading.Event()

    def b_step():
        b.wait(k)  # began before B was ready: an earlier cohort -> wait
        released.set()
        b.begin(k)

    t = threading.Thread(target=b_step)
    t.start()
    time.sleep(0.05)
    assert not released.is_set()
    a.end()  # A's call returns
    t.join(2)
    assert released.is_set()
    # A's next step: B's call began after A's returned -> same cohort, A goes at once
    assert a.wait(k) < 0.01
    a.begin(k)
    b.end()
    a.end()
    a.close()
    b.close()


def test_other_shapes_and_stale_entries_do_not_block(key):
    a, b = StepGate(**key), StepGate(**key, stale_after_s=0.2)
    a.start_loop()
    a.begin(shape_key((4, 8, 8)))
    b.start_loop()
    assert b.wait(shape_key((4, 16, 16))) < 0.01  # cannot share a batch anyway
    t0 = time.monotonic()
    b.wait(shape_key((4, 8, 8)))  # waits until A's entry goes stale (a dead process)
    assert 0.1 < time.monotonic() - t0 < 1.0
    a.close()
    b.close()


def test_wait_is_capped(key):
    a, b = StepGate(**key), StepGate(**key, max_wait_s=0.1)
    k = shape_key((4, 8, 8))
    a.begin(k)
    b.start_loop()
    assert 0.09 < b.wait(k) < 0.5
    a.close()
    b.close()


def _claim_and_report(key, folder, q):
    g = StepGate(key, folder=folder)
    q.put(g.slot)
    g.close()


def test_slots_across_processes_and_released_on_close(key):
    g = StepGate(**key)
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_claim_and_report,
                                        args=(key["key"], key["folder"], q))
    p.start()
    p.join(60)
    other = q.get(timeout=5)
    assert other != g.slot
    g.close()
    again = StepGate(**key)
    assert again.slot == 0  # the slots of closed gates are free again
    again.close()
    assert not any(key["folder"].iterdir())  # the last one out removed the file


def test_files_of_dead_servers_are_swept(key):
    import numpy as np

    dead = key["folder"] / "uip-stepgate-old-server"
    pids = np.zeros(SLOTS * 3, np.int64)
    pids[0] = 2**22 + 12345  # above pid_max: no such process
    dead.write_bytes(pids.tobytes())
    live = StepGate(**key)
    assert not dead.exists()  # a new gate sweeps it
    assert sweep(key["folder"]) == []  # a live gate's file stays
    live.close()


def test_a_call_of_a_dead_process_does_not_block(key):
    """A stub killed mid-call leaves its entry in flight: the next loops skip it at once."""
    import subprocess

    a, b = StepGate(**key), StepGate(**key, max_wait_s=5.0)
    a.begin(1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    a._pids[a.slot] = dead.pid  # a's call now belongs to a process that is gone
    b.start_loop()
    time.sleep(0.01)
    assert b.wait(1) < 0.5
