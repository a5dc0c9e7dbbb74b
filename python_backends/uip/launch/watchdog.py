"""Supervision: notice a dead Python backend stub and reload its model.

Triton 2.51 leaves a model whose stub died READY but deaf ("Stub process 'X_0_0' is not
healthy" forever). A thread in the launcher watches the server's stub processes (children of
tritonserver named triton_python_backend_stub; the model is the folder of the model.py they
run) and, when one of a READY model's stubs has gone, unloads the ensembles above the model
and the model, then loads them again through the repository API (explicit model control).
While that runs the model is not ready (`/v2/models/X/ready` fails) and requests to it fail
with Triton's "has no available versions" (HTTP 404) instead of a silent zombie.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

import psutil

from uip.core.stubs import stub_pids
from uip.launch.admin import AdminApi

INTERVAL_S = 1.0
MAX_RELOADS = 5  # per model per RELOAD_WINDOW_S: a model that dies at once is left alone
RELOAD_WINDOW_S = 600.0


def ensembles_above(repository: Path) -> dict[str, list[str]]:
    """Model -> the ensembles that use it, directly or through another ensemble, innermost
    first (the order to load them in)."""
    from uip.repo.needed import read_config

    direct: dict[str, list[str]] = defaultdict(list)
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        cfg = read_config(cfg_path)
        for step in cfg.ensemble_scheduling.step:
            direct[step.model_name].append(cfg.name or cfg_path.parent.name)
    out: dict[str, list[str]] = {}
    for model in direct:
        order, todo = [], list(direct[model])
        while todo:
            ens = todo.pop(0)
            if ens not in order:
                order.append(ens)
                todo.extend(direct.get(ens, []))
        out[model] = order
    return out


class Watchdog(threading.Thread):
    """Reloads the model of any stub that dies while its model is READY."""

    def __init__(self, server_pid: int, api: AdminApi, repository: Path,
                 log: Callable[[str], None] = print, interval: float = INTERVAL_S):
        super().__init__(name="uip-watchdog", daemon=True)
        self.server_pid = server_pid
        self.api = api
        self.above = ensembles_above(repository)
        self.log = log
        self.interval = interval
        self.reloads: list[tuple[str, float]] = []  # (model, seconds it took), for tests/logs
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._known: dict[str, set[int]] = {}
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.check()
            except psutil.NoSuchProcess:
                return  # the server is gone
            except Exception as exc:  # noqa: BLE001 - the watchdog must outlive any one error
                self.log(f"uip watchdog: check failed: {type(exc).__name__}: {exc}")

    def check(self) -> None:
        """One look at the stubs: adopt new ones, reload the models of dead ones."""
        live = stub_pids(self.server_pid)
        for model, pids in list(self._known.items()):
            now = live.get(model, set())
            dead = pids - now
            if not dead:
                continue
            if now - pids:  # new stubs came up as old ones went: the model was reloaded
                self._known[model] = now
                continue
            del self._known[model]
            self.heal(model, dead)
        for model, pids in stub_pids(self.server_pid).items():
            self._known.setdefault(model, set()).update(pids)

    def heal(self, model: str, dead: set[int]) -> None:
        pids = ", ".join(map(str, sorted(dead)))
        try:
            state = self.api.states().get(model)
        except OSError:  # not serving yet: the stub of a model being loaded came and went
            return
        if state != "READY":
            return  # unloaded on purpose, or failed to load: not ours to bring back
        recent = self._recent[model]
        now = time.monotonic()
        while recent and now - recent[0] > RELOAD_WINDOW_S:
            recent.popleft()
        if len(recent) >= MAX_RELOADS:
            self.log(f"uip watchdog: stub {pids} of model '{model}' died again; it was reloaded "
                     f"{len(recent)} times in {RELOAD_WINDOW_S:.0f} s, leaving it down")
            return
        recent.append(now)
        ensembles = self.above.get(model, [])
        also = f" and the ensembles above it ({', '.join(ensembles)})" if ensembles else ""
        self.log(f"uip watchdog: the stub of model '{model}' (pid {pids}) died; reloading "
                 f"'{model}'{also}")
        try:
            for name in [*reversed(ensembles), model]:
                self.api.unload(name)
            for name in [model, *ensembles]:
                self.api.load(name)
        except Exception as exc:  # noqa: BLE001 - reported, tried again if it dies again
            self.log(f"uip watchdog: reloading '{model}' failed: {exc}")
            return
        took = time.monotonic() - now
        self.reloads.append((model, took))
        self.log(f"uip watchdog: '{model}' is serving again ({took:.1f} s)")
