"""StepBatcher (uip.sd.batcher): many requests stepped by one UNet call per iteration, on the
tiny pipeline in-process, against diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uip.bench.sd_reference import DiffusersReference
from uip.core.faults import Unavailable
from uip.sd.batcher import StepBatcher
from uip.sd.loop import Cancelled, PipelineInfo, SDLoop, load_tokenizer
from uip.sd.models import TextEncoder, UNet, VaeDecoder
from uip.sd.request import SDRequest
from uip.sd.schedulers import SchedulerFactory

PROMPT = "a photo of an astronaut riding a horse on the moon"


class Nets:
    """The three networks, counting their calls (UNet: samples and timesteps per call)."""

    def __init__(self, folder):
        self.text, self.unet_model, self.vae = TextEncoder(folder), UNet(folder), VaeDecoder(
            folder)
        self.encodes: list[int] = []
        self.unets: list[torch.Tensor] = []
        self.decodes: list[int] = []
        self.fail_unet_for: int | None = None  # latent width that makes the UNet raise

    def encode(self, ids):
        self.encodes.append(ids.shape[0])
        return self.text(ids)

    def unet(self, x, t, hidden):
        assert t.shape == (x.shape[0],) and hidden.shape[0] == x.shape[0]
        self.unets.append(t.clone())
        if self.fail_unet_for == x.shape[-1]:
            raise RuntimeError("unet failed")
        return self.unet_model(x, t, hidden)

    def decode(self, latents):
        self.decodes.append(latents.shape[0])
        return self.vae(latents)


@pytest.fixture(scope="module")
def reference(sd_tiny_dir) -> DiffusersReference:
    return DiffusersReference(sd_tiny_dir)


@pytest.fixture
def nets(sd_tiny_dir) -> Nets:
    return Nets(sd_tiny_dir)


@pytest.fixture
def loop(sd_tiny_dir, nets) -> SDLoop:
    return SDLoop(load_tokenizer(sd_tiny_dir), SchedulerFactory.from_folder(sd_tiny_dir),
                  PipelineInfo.from_folder(sd_tiny_dir), nets.encode, nets.unet, nets.decode)


def _req(**kw) -> SDRequest:
    base = dict(prompt=PROMPT, negative_prompt="blurry", steps=4, guidance_scale=7.5, seed=42,
                height=64, width=64, scheduler="ddim")
    return SDRequest(**{**base, **kw})


def _ref(reference, r: SDRequest) -> np.ndarray:
    return reference(r.prompt, negative_prompt=r.negative_prompt, steps=r.steps,
                     guidance_scale=r.guidance_scale, seed=r.seed, height=r.height,
                     width=r.width, scheduler=r.scheduler)


class Client:
    """One request's side: its outcome and a cancel switch."""

    def __init__(self, batcher: StepBatcher, req: SDRequest):
        self.req, self.cancel, self.image, self.error, self.answers = req, False, None, None, 0
        batcher.submit(req, lambda: self.cancel, self.done)

    def done(self, image, error):
        self.image, self.error, self.answers = image, error, self.answers + 1


def drain(batcher: StepBatcher, limit: int = 1000) -> int:
    n = 0
    while batcher.run_once():
        n += 1
        assert n < limit
    return n


@pytest.mark.parametrize("scheduler", ["pndm", "dpm++", "euler_a"])
def test_alone_equals_the_pipeline(loop, reference, nets, scheduler):
    batcher = StepBatcher(loop)
    c = Client(batcher, _req(scheduler=scheduler))
    iterations = drain(batcher)
    assert c.error is None and c.answers == 1
    assert np.array_equal(c.image, _ref(reference, c.req))
    assert iterations == len(nets.unets)  # one UNet call per iteration
    assert nets.encodes == [1, 1] and nets.decodes == [1]  # prompt, negative; one decode


def test_concurrent_requests_share_one_unet_call_per_iteration(loop, reference, nets):
    reqs = [_req(scheduler="ddim", seed=1), _req(scheduler="dpm++", seed=2, steps=6),
            _req(scheduler="euler_a", seed=3, guidance_scale=1.0),  # no CFG: one row
            _req(scheduler="pndm", seed=4, steps=3, negative_prompt="")]
    batcher = StepBatcher(loop, max_batch=8)
    clients = [Client(batcher, r) for r in reqs]
    drain(batcher)
    longest = max(len(loop.job(r).timesteps) for r in reqs)  # (PNDM: steps + 1)
    assert len(nets.unets) == longest
    assert len(nets.unets[0]) == 2 + 2 + 1 + 2  # all four in the first call
    assert nets.encodes == [4, 3]  # the prompts in one call, the 3 guided negatives in one
    assert sum(nets.decodes) == 4 and len(nets.decodes) <= 3
    want = [_ref(reference, r) for r in reqs]
    for i, c in enumerate(clients):
        assert c.error is None and c.answers == 1
        diff = np.abs(c.image.astype(int) - want[i].astype(int)).max()
        assert diff <= 2, (i, diff)
        for j in range(len(reqs)):  # each got its own image
            if j != i:
                assert np.abs(c.image.astype(int) - want[j].astype(int)).max() > 2
    assert batcher.stats.max_active == 4 and not batcher.busy


def test_requests_join_between_iterations_and_wait_beyond_the_cap(loop, nets):
    batcher = StepBatcher(loop, max_batch=2)
    a, b, c = (Client(batcher, _req(seed=s, steps=4)) for s in (1, 2, 3))
    batcher.run_once()
    assert len(nets.unets[-1]) == 4 and [e.req for e in batcher.waiting] == [c.req]
    batcher.run_once()
    d = Client(batcher, _req(seed=4, steps=2))  # arrives mid-flight, behind c
    drain(batcher)
    assert all(x.answers == 1 and x.error is None for x in (a, b, c, d))
    sizes = [len(t) // 2 for t in nets.unets]
    assert max(sizes) == 2
    assert sizes == [2] * 6 + [1] * 2  # a+b 4 steps; c+d (d joined when a, b left); c
    assert len(nets.unets) <= 4 * -(-4 // 2)  # steps x ceil(requests / cap)


def test_a_cancelled_request_leaves_at_the_next_iteration_and_frees_its_slot(loop, nets):
    batcher = StepBatcher(loop, max_batch=1)
    a = Client(batcher, _req(steps=50))
    b = Client(batcher, _req(steps=3, seed=7))
    batcher.run_once()
    batcher.run_once()
    a.cancel = True
    calls = len(nets.unets)
    batcher.run_once()  # a leaves before any UNet call of this iteration; b takes its slot
    assert isinstance(a.error, Cancelled) and a.answers == 1
    assert len(nets.unets) == calls + 1 and len(nets.unets[-1]) == 2
    drain(batcher)
    assert b.error is None and b.image.shape == (64, 64, 3) and a.answers == 1


def test_a_waiting_request_cancelled_never_runs(loop, nets):
    batcher = StepBatcher(loop, max_batch=1)
    a, b = Client(batcher, _req(steps=2)), Client(batcher, _req(steps=2))
    b.cancel = True
    drain(batcher)
    assert isinstance(b.error, Cancelled) and a.error is None
    assert nets.encodes == [1, 1] and len(nets.unets) == 2


def test_latent_sizes_batch_apart_and_a_failure_fails_only_its_call(loop, reference, nets):
    batcher = StepBatcher(loop)
    small, wide = Client(batcher, _req(seed=5, steps=2)), Client(batcher, _req(width=96, seed=6,
                                                                              steps=2))
    drain(batcher)
    assert len(nets.unets) == 2 * 2  # one call per latent size per iteration
    for c in (small, wide):  # alone in their UNet calls (the prompts encoded together)
        assert np.abs(c.image.astype(int) - _ref(reference, c.req).astype(int)).max() <= 2
    nets.fail_unet_for = 96 // 8
    ok, bad = Client(batcher, small.req), Client(batcher, wide.req)
    drain(batcher)
    assert isinstance(bad.error, RuntimeError) and str(bad.error) == "unet failed"
    assert ok.error is None and np.array_equal(ok.image, small.image)
    after = Client(batcher, small.req)  # the batcher goes on serving
    drain(batcher)
    assert np.array_equal(after.image, _ref(reference, after.req))


def test_full_waiting_queue_is_unavailable_and_stop_fails_the_rest(loop):
    batcher = StepBatcher(loop, max_batch=1, max_waiting=2)
    a, b = Client(batcher, _req()), Client(batcher, _req())
    with pytest.raises(Unavailable, match="max_waiting=2"):
        Client(batcher, _req())
    batcher.stop()
    assert isinstance(a.error, Unavailable) and isinstance(b.error, Unavailable)


def test_the_thread_serves_requests_submitted_from_other_threads(loop, reference):
    import threading

    batcher = StepBatcher(loop).start()
    try:
        done = threading.Event()
        got = {}

        def finished(image, error):
            got.update(image=image, error=error)
            done.set()

        r = _req(scheduler="euler")
        batcher.submit(r, lambda: False, finished)
        assert done.wait(60)
        assert got["error"] is None and np.array_equal(got["image"], _ref(reference, r))
    finally:
        batcher.stop()
