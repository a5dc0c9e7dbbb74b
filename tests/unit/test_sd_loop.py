"""The SD sampling loop (uip.sd.loop) in-process vs diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uip.bench.sd_reference import DiffusersReference
from uip.sd.loop import Cancelled, PipelineInfo, SDLoop, load_tokenizer
from uip.sd.models import TextEncoder, UNet, VaeDecoder
from uip.sd.request import SDRequest
from uip.sd.schedulers import SCHEDULERS, SchedulerFactory

PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low resolution"


@pytest.fixture(scope="module")
def folder(sd_tiny_dir):
    return sd_tiny_dir


@pytest.fixture(scope="module")
def reference(folder) -> DiffusersReference:
    return DiffusersReference(folder)


class Calls:
    """The three networks as the loop sees them, loaded from the folder like the server does;
    the UNet gets its timesteps as FP32, as they travel to sd_unet."""

    def __init__(self, folder):
        self.encoder, self.unet_model, self.vae = TextEncoder(folder), UNet(folder), VaeDecoder(
            folder)
        self.unet_calls: list[tuple[int, torch.Tensor]] = []

    def unet(self, x, t, hidden):
        assert t.shape == (x.shape[0],)
        self.unet_calls.append((x.shape[0], t.clone()))
        return self.unet_model(x, t.to(torch.float32), hidden)


@pytest.fixture(scope="module")
def calls(folder) -> Calls:
    return Calls(folder)


@pytest.fixture(scope="module")
def loop(folder, calls) -> SDLoop:
    return SDLoop(load_tokenizer(folder), SchedulerFactory.from_folder(folder),
                  PipelineInfo.from_folder(folder), calls.encoder, calls.unet, calls.vae)


def _req(**kw) -> SDRequest:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=5, guidance_scale=7.5, seed=42,
                height=64, width=64, scheduler="pndm")
    return SDRequest(**{**base, **kw})


def _ref(reference: DiffusersReference, r: SDRequest) -> np.ndarray:
    return reference(r.prompt, negative_prompt=r.negative_prompt, steps=r.steps,
                     guidance_scale=r.guidance_scale, seed=r.seed, height=r.height,
                     width=r.width, scheduler=r.scheduler)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_loop_equals_pipeline_for_every_scheduler(loop, reference, scheduler):
    r = _req(scheduler=scheduler)
    got = loop(r)
    want = _ref(reference, r)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


@pytest.mark.parametrize("kw", [
    dict(guidance_scale=1.0, scheduler="euler_a"),  # no CFG: one batch-1 UNet call per step
    dict(guidance_scale=0.0, scheduler="ddim"),
    dict(negative_prompt="", seed=0, steps=3, scheduler="dpm++"),
    dict(height=48, width=80, scheduler="lms"),
    dict(prompt="", steps=1, scheduler="euler"),
    dict(prompt=" ".join(["colorful"] * 120), steps=2),  # far past 77 tokens: truncated
])
def test_loop_equals_pipeline_variants(loop, reference, kw):
    r = _req(**kw)
    assert np.array_equal(loop(r), _ref(reference, r))


def test_inputs_change_the_image(loop):
    """The equality tests above could not pass by accident: each input moves pixels."""
    base = loop(_req())
    for kw in (dict(seed=43), dict(prompt="a dog"), dict(negative_prompt="ugly"),
               dict(guidance_scale=3.0), dict(steps=6), dict(scheduler="ddim")):
        assert not np.array_equal(loop(_req(**kw)), base), kw


def test_unet_gets_one_guided_batch_per_step(loop, calls):
    calls.unet_calls.clear()
    loop(_req(steps=4, scheduler="ddim"))
    assert [b for b, _ in calls.unet_calls] == [2] * 4
    assert all(t[0] == t[1] for _, t in calls.unet_calls)  # one timestep per sample
    calls.unet_calls.clear()
    loop(_req(steps=3, guidance_scale=1.0, scheduler="ddim"))
    assert [b for b, _ in calls.unet_calls] == [1] * 3


def test_fresh_scheduler_per_request(loop):
    """Stateful multistep schedulers (DPM++, PNDM) give the same image run after run."""
    for name in ("dpm++", "pndm", "euler_a"):
        assert np.array_equal(loop(_req(scheduler=name)), loop(_req(scheduler=name)))


def test_cancel_stops_before_the_next_unet_call(loop, calls):
    calls.unet_calls.clear()
    polls = []

    def cancelled():
        polls.append(1)
        return len(calls.unet_calls) >= 3

    with pytest.raises(Cancelled):
        loop(_req(steps=50), cancelled=cancelled)
    assert len(calls.unet_calls) == 3
    assert len(polls) == 5  # before the request, before steps 0-2, then true before step 3


def test_batched_unet_stays_within_two_levels(folder, loop, calls, reference):
    """Steps merged with another request's (what dynamic batching does) change only the last
    bits: at most 2/255 per pixel."""
    other = torch.Generator().manual_seed(7)

    def merged_unet(x, t, hidden):
        n = x.shape[0]
        x2 = torch.cat([x, torch.randn(x.shape, generator=other)])
        h2 = torch.cat([hidden, torch.randn(hidden.shape, generator=other)])
        t2 = torch.cat([t, torch.full_like(t, 500)])
        return calls.unet_model(x2, t2.to(torch.float32), h2)[:n]

    batched = SDLoop(loop.tokenizer, loop.schedulers, loop.info, calls.encoder, merged_unet,
                     calls.vae)
    for name in ("ddim", "dpm++", "euler_a"):
        r = _req(scheduler=name, steps=8)
        diff = np.abs(batched(r).astype(int) - _ref(reference, r).astype(int)).max()
        assert diff <= 2, (name, diff)


def test_default_scheduler_is_the_artifacts(folder, loop):
    factory = SchedulerFactory.from_folder(folder)
    assert factory.default_name == "pndm"
    assert type(factory.create(None)).__name__ == "PNDMScheduler"
    a, b = factory.create("dpm++"), factory.create("dpm++")
    assert a is not b and type(a).__name__ == "DPMSolverMultistepScheduler"
    info = PipelineInfo.from_folder(folder)
    assert info.default_size == (64, 64) and info.vae_scale_factor == 8
