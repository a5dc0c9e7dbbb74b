"""`stable_diffusion` request validation: limits from the spec, INVALID_ARG messages."""

from __future__ import annotations

import numpy as np
import pytest

from uip.core.inputs import InvalidInput
from uip.core.settings import ModelSettings
from uip.sd.request import DEFAULT_SEED, SDDefaults, SDLimits, parse_request
from uip.sd.schedulers import SCHEDULERS, SchedulerFactory

DEFAULTS = SDDefaults(steps=50, guidance_scale=7.5, height=64, width=64, scheduler="pndm")


def _inputs(**kw) -> dict[str, np.ndarray]:
    dtypes = dict(prompt=object, negative_prompt=object, steps=np.int32,
                  guidance_scale=np.float32, seed=np.int64, height=np.int32, width=np.int32,
                  scheduler=object)
    out = {}
    for k, v in kw.items():
        v = v.encode() if isinstance(v, str) else v
        out[k] = np.array([[v]], dtype=dtypes[k])
    return out


@pytest.fixture(scope="module")
def factory():
    import diffusers

    return SchedulerFactory(diffusers.PNDMScheduler())


def _parse(factory, limits=SDLimits(), **kw):
    return parse_request(_inputs(**kw), limits, DEFAULTS, check_scheduler=factory.check,
                         size_multiple=8)


def test_defaults(factory):
    r = _parse(factory, prompt="a cat")
    assert (r.prompt, r.negative_prompt, r.steps, r.guidance_scale, r.seed, r.height, r.width,
            r.scheduler) == ("a cat", "", 50, 7.5, DEFAULT_SEED, 64, 64, "pndm")


def test_all_inputs(factory):
    r = _parse(factory, prompt="p", negative_prompt="n", steps=7, guidance_scale=3.0, seed=-5,
               height=128, width=40, scheduler="DPM++")
    assert (r.negative_prompt, r.steps, r.guidance_scale, r.seed, r.height, r.width,
            r.scheduler) == ("n", 7, 3.0, -5, 128, 40, "dpm++")


@pytest.mark.parametrize("kw, message", [
    (dict(), "input 'prompt' is required"),
    (dict(prompt="x", steps=0), "'steps' must be >= 1, got 0"),
    (dict(prompt="x", steps=1001), "'steps' must be <= 1000, got 1001"),
    (dict(prompt="x", height=60), "'height' must be a multiple of 8, got 60"),
    (dict(prompt="x", width=2048), "'width' must be between 8 and 1024 pixels, got 2048"),
    (dict(prompt="x", height=0), "'height' must be between 8 and 1024 pixels"),
    (dict(prompt="x", guidance_scale=-1.0), "'guidance_scale' must be >= 0.0"),
    (dict(prompt="x", guidance_scale=float("nan")), "'guidance_scale' must be a finite number"),
    (dict(prompt="x", scheduler="karras"), "'scheduler' must be one of ddim, euler, euler_a"),
    (dict(prompt="x" * 20000), "'prompt' must be at most 16384 bytes"),
    (dict(prompt=b"\xff\xfe"), "'prompt' must be UTF-8 text"),
])
def test_invalid(factory, kw, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("+", r"\+")):
        _parse(factory, **kw)


def test_several_values_refused(factory):
    inputs = _inputs(prompt="x")
    inputs["steps"] = np.array([[3, 4]], dtype=np.int32)
    with pytest.raises(InvalidInput, match="'steps' must hold one value per request"):
        parse_request(inputs, SDLimits(), DEFAULTS, check_scheduler=factory.check)
    inputs = {"prompt": np.array([[b"a", b"b"]], dtype=object)}
    with pytest.raises(InvalidInput, match="exactly one string"):
        parse_request(inputs, SDLimits(), DEFAULTS, check_scheduler=factory.check)


def test_limits_from_spec_settings(factory):
    settings = ModelSettings.from_config({"name": "stable_diffusion", "parameters": {
        "limits.max_steps": {"string_value": "20"},
        "limits.max_height": {"string_value": "256"},
        "limits.size_multiple": {"string_value": "64"},
        "limits.max_guidance_scale": {"string_value": "12.5"},
    }})
    limits = SDLimits.from_settings(settings.limits)
    assert (limits.max_steps, limits.max_height, limits.max_guidance_scale) == (20, 256, 12.5)
    with pytest.raises(InvalidInput, match="'steps' must be <= 20"):
        _parse(factory, limits, prompt="x", steps=21)
    with pytest.raises(InvalidInput, match="'height' must be between 8 and 256"):
        _parse(factory, limits, prompt="x", height=264)
    with pytest.raises(InvalidInput, match="multiple of 64"):
        _parse(factory, limits, prompt="x", height=96)
    with pytest.raises(InvalidInput, match="'guidance_scale' must be <= 12.5"):
        _parse(factory, limits, prompt="x", guidance_scale=13.0)
    with pytest.raises(ValueError, match="unknown stable_diffusion limits"):
        SDLimits.from_settings({"max_stepz": "3"})


def test_vae_scale_factor_raises_the_size_multiple(factory):
    with pytest.raises(InvalidInput, match="multiple of 16"):
        parse_request(_inputs(prompt="x", height=40), SDLimits(), DEFAULTS,
                      check_scheduler=factory.check, size_multiple=16)


def test_scheduler_names(factory):
    assert factory.default_name == "pndm"
    assert factory.check(None) == "pndm" and factory.check("") == "pndm"
    for name in SCHEDULERS:
        assert factory.check(name) == name
        assert factory.create(name) is not factory.create(name)


def test_unavailable_scheduler_is_explained(factory):
    factory.unavailable["lms"] = "needs scipy"
    try:
        with pytest.raises(InvalidInput, match="'lms' is not available on this server: needs"):
            factory.check("lms")
        assert "lms" not in factory.names
    finally:
        del factory.unavailable["lms"]


def test_steps_a_scheduler_cannot_run_are_refused():
    """With SD's `steps_offset: 1`, diffusers' DDIM/PNDM index timestep 1000 at 1000 steps."""
    import diffusers

    base = diffusers.PNDMScheduler.from_config(dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        skip_prk_steps=True, set_alpha_to_one=False))
    factory = SchedulerFactory(base)
    factory.check_steps("ddim", 999)
    factory.check_steps("euler", 1000)
    for name in ("ddim", "pndm"):
        with pytest.raises(InvalidInput, match=f"scheduler '{name}' cannot run 1000 steps"):
            factory.check_steps(name, 1000)
