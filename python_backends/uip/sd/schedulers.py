"""Scheduler names of the public contract -> diffusers classes; a fresh instance per request.

Schedulers keep state (step index, multistep history), so every request gets its own instance,
made the way diffusers users switch schedulers: `Cls.from_config(pipe.scheduler.config)`, where
`pipe.scheduler` is the artifact's own scheduler (its `scheduler/scheduler_config.json`).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path

import diffusers
import torch

from uip.core.inputs import InvalidInput

# contract name -> diffusers class name
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}


def _class(class_name: str):
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {class_name!r}")
    return cls


class SchedulerFactory:
    """Makes a new scheduler per request from the artifact's scheduler config."""

    def __init__(self, base):
        self.base = base  # the artifact's scheduler instance: its config is the template
        self.base_class = type(base).__name__
        by_class = {v: k for k, v in SCHEDULERS.items()}
        # the default: the artifact's scheduler, under its contract name when it has one
        self.default_name = by_class.get(self.base_class, self.base_class)
        self.unavailable: dict[str, str] = {}
        for name, class_name in SCHEDULERS.items():
            try:  # e.g. LMS needs scipy; a dummy class raises ImportError when used
                _class(class_name).from_config(self.base.config)
            except ImportError as exc:
                self.unavailable[name] = str(exc).strip().splitlines()[0]

    @classmethod
    def from_folder(cls, folder: Path) -> SchedulerFactory:
        """From a diffusers pipeline folder (its `scheduler/` subfolder)."""
        import json

        cfg = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
        base = _class(cfg["_class_name"]).from_pretrained(folder, subfolder="scheduler")
        return cls(base)

    @property
    def names(self) -> list[str]:
        """Scheduler names a request may ask for on this server."""
        return [n for n in SCHEDULERS if n not in self.unavailable]

    def check(self, name: str | None) -> str:
        """The scheduler name a request gets (the default when absent); InvalidInput if unknown."""
        if name is None or name == "":
            return self.default_name
        if name == self.default_name:
            return name
        if name not in SCHEDULERS:
            raise InvalidInput(f"'scheduler' must be one of {', '.join(SCHEDULERS)}; "
                               f"got {name!r}")
        if name in self.unavailable:
            raise InvalidInput(f"scheduler {name!r} is not available on this server: "
                               f"{self.unavailable[name]}")
        return name

    def create(self, name: str | None = None):
        """A fresh scheduler instance (never shared between requests)."""
        name = self.check(name)
        class_name = SCHEDULERS.get(name, self.base_class)
        return _class(class_name).from_config(self.base.config)

    def warm_up(self) -> None:
        """Import and run every available scheduler once (a few steps on a 1-pixel latent), so
        the first request of each kind does not pay for diffusers' lazy imports."""
        for name in self.names:
            _dry_run(self, name, 3)

    def check_steps(self, name: str, steps: int) -> None:
        """InvalidInput when this scheduler cannot run `steps` steps with the artifact's config.

        Some diffusers schedulers fail at the edge (with SD's `steps_offset: 1`, DDIM and PNDM
        index timestep 1000 at 1000 steps; DPM++ overruns its sigmas), where the pipeline
        itself raises IndexError. A dry run on a 1-pixel latent finds that out; it is cached
        per (scheduler, steps), so only the first request of a kind pays for it. Those failures
        need timesteps spaced by 1 (steps > half the training timesteps); fewer steps skip it
        (the dry run of LMS, which integrates per step, costs as much as its real loop).
        """
        train = int(self.base.config.get("num_train_timesteps", 1000))
        if steps <= train // 2:
            return
        problem = _dry_run(self, name, steps)
        if problem:
            raise InvalidInput(f"scheduler {name!r} cannot run {steps} steps with this model's "
                               f"scheduler config ({problem}); use fewer 'steps'")


@lru_cache(maxsize=1024)
def _dry_run(factory: SchedulerFactory, name: str, steps: int) -> str | None:
    try:
        sched = factory.create(name)
        sched.set_timesteps(steps)
        params = set(inspect.signature(sched.step).parameters)
        extra = {"generator": torch.Generator().manual_seed(0)} if "generator" in params else {}
        x = torch.zeros(1, 1, 1, 1)
        for t in sched.timesteps:
            sched.scale_model_input(x, t)
            x = sched.step(torch.zeros_like(x), t, x, **extra, return_dict=False)[0]
    except (IndexError, ValueError, RuntimeError) as exc:
        return f"diffusers raises {type(exc).__name__}: {exc}"
    return None
