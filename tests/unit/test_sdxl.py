"""SDXL-shaped pipelines: the tiny offline SDXL folder, its request contract, and the SDXL
loop stepped alone and by the StepBatcher, against diffusers' StableDiffusionXLPipeline."""

from __future__ import annotations

import dataclasses
import filecmp

import numpy as np
import pytest

from uip.artifacts import sdxl_tiny
from uip.bench.sd_reference import DiffusersXLReference
from uip.core.inputs import InvalidInput
from uip.sd.batcher import StepBatcher
from uip.sd.loop import PipelineInfo
from uip.sd.models import VaeDecoder
from uip.sd.request import SDDefaults
from uip.sd.schedulers import SchedulerFactory
from uip.sd.xl_loop import SDXLLoop, XLInfo, load_tokenizers
from uip.sd.xl_models import TextEncoderXL, UNetXL
from uip.sd.xl_request import SDXLLimits, SDXLRequest, parse_xl_request

PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low resolution"


@pytest.fixture(scope="module")
def reference(sdxl_tiny_dir) -> DiffusersXLReference:
    return DiffusersXLReference(sdxl_tiny_dir)


class Nets:
    """SDXL's networks as the server's co-located placement loads them; the UNet counts its
    calls and checks the batched added conditioning."""

    def __init__(self, folder):
        self.encoders = tuple(TextEncoderXL(folder, p) for p in ("text_encoder", "text_encoder_2"))
        self.unet_model, self.vae = UNetXL(folder), VaeDecoder(folder)
        self.unet_rows: list[int] = []

    def unet(self, x, t, hidden, text_embeds, time_ids):
        n = x.shape[0]
        assert t.shape == (n,) and hidden.shape[0] == text_embeds.shape[0] == n
        assert time_ids.shape == (n, 6)
        self.unet_rows.append(n)
        return self.unet_model(x, t, hidden, text_embeds, time_ids)


@pytest.fixture(scope="module")
def nets(sdxl_tiny_dir) -> Nets:
    return Nets(sdxl_tiny_dir)


@pytest.fixture(scope="module")
def loop(sdxl_tiny_dir, nets) -> SDXLLoop:
    return SDXLLoop(load_tokenizers(sdxl_tiny_dir), SchedulerFactory.from_folder(sdxl_tiny_dir),
                    PipelineInfo.from_folder(sdxl_tiny_dir), nets.encoders, nets.unet, nets.vae)


def _req(**kw) -> SDXLRequest:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=3, guidance_scale=5.0, seed=42,
                height=64, width=64, scheduler="euler", original_size=(64, 64),
                crop_top_left=(0, 0), target_size=(64, 64), zero_negative=False)
    return SDXLRequest(**{**base, **kw})


def _ref(reference, r: SDXLRequest) -> np.ndarray:
    return reference(r.prompt, negative_prompt=None if r.zero_negative else r.negative_prompt,
                     steps=r.steps, guidance_scale=r.guidance_scale, seed=r.seed,
                     height=r.height, width=r.width, scheduler=r.scheduler,
                     original_size=r.original_size, crops_coords_top_left=r.crop_top_left,
                     target_size=r.target_size)


def test_tiny_sdxl_folder_is_deterministic_and_loads(sdxl_tiny_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    sdxl_tiny.build(tmp_path / "again")
    cmp = filecmp.dircmp(sdxl_tiny_dir, tmp_path / "again")

    def differing(c) -> list[str]:
        return c.diff_files + c.left_only + c.right_only + [
            f for sub in c.subdirs.values() for f in differing(sub)]

    assert differing(cmp) == []
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "again", add_watermarker=False)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.default_sample_size * pipe.vae_scale_factor == 64
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert XLInfo.from_folder(sdxl_tiny_dir).force_zeros_for_empty_prompt
    assert sdxl_tiny._shapes("sdxl")["unet"]["cross_attention_dim"] == 2048
    assert sdxl_tiny._shapes("sdxl")["unet"]["projection_class_embeddings_input_dim"] == 2816


def test_an_sd15_folder_is_not_sdxl(sd_tiny_dir):
    with pytest.raises(ValueError, match="not an SDXL pipeline folder"):
        XLInfo.from_folder(sd_tiny_dir)


@pytest.mark.parametrize("kw", [  # Euler (the folder's) and zero negatives: test_sdxl_server
    dict(scheduler="dpm++", original_size=(128, 96), crop_top_left=(8, 16)),
    dict(scheduler="euler_a", target_size=(48, 80), height=48, width=80),
    dict(negative_prompt=""),  # explicit empty: encoded, not zeros
    dict(guidance_scale=1.0, scheduler="ddim"),  # no CFG
])
def test_loop_equals_sdxl_pipeline(loop, reference, kw):
    r = _req(**kw)
    got = loop(r)
    want = _ref(reference, r)
    assert got.shape == (r.height, r.width, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


def test_sdxl_inputs_move_pixels(loop):
    """The equality above could not pass by accident: each SDXL input changes the image."""
    base = loop(_req(steps=2))
    for kw in (dict(original_size=(128, 128)), dict(crop_top_left=(0, 8)),
               dict(target_size=(32, 64)), dict(zero_negative=True), dict(negative_prompt="")):
        assert not np.array_equal(loop(_req(steps=2, **kw)), base), kw


def test_batched_requests_share_unet_calls(loop, nets, reference):
    """Three SDXL requests stepped together: one UNet call per iteration over their rows
    (each with its own time ids), each image within 2/255 of the pipeline's."""
    reqs = [_req(seed=1, scheduler="ddim", original_size=(128, 128)),
            _req(seed=2, zero_negative=True, negative_prompt=""),
            _req(seed=3, scheduler="dpm++", crop_top_left=(16, 0))]
    batcher = StepBatcher(loop, max_batch=8)
    out: dict[int, np.ndarray] = {}
    for i, r in enumerate(reqs):
        batcher.submit(r, lambda: False, lambda img, err, i=i: out.__setitem__(i, (img, err)))
    nets.unet_rows.clear()
    while batcher.run_once():
        pass
    assert nets.unet_rows == [6] * 3  # 3 CFG pairs per call, 3 steps
    for i, r in enumerate(reqs):
        img, err = out[i]
        assert err is None
        diff = np.abs(img.astype(int) - _ref(reference, r).astype(int)).max()
        assert diff <= 2, (i, diff)


LIMITS = SDXLLimits(max_size_condition=4096)
DEFAULTS = SDDefaults(guidance_scale=5.0, height=64, width=64, scheduler="euler")


def _inputs(**kw) -> dict[str, np.ndarray]:
    out = {"prompt": np.array([b"a cat"], dtype=object)}
    for k, v in kw.items():
        out[k] = np.array([v.encode() if isinstance(v, str) else v])
    return out


def test_request_defaults_and_size_conditioning():
    r = parse_xl_request(_inputs(height=48, width=80), LIMITS, DEFAULTS)
    assert (r.original_size, r.crop_top_left, r.target_size) == ((48, 80), (0, 0), (48, 80))
    assert r.zero_negative and r.guidance_scale == 5.0
    assert r.time_ids == [48, 80, 0, 0, 48, 80]
    r = parse_xl_request(_inputs(negative_prompt="", original_height=1024, original_width=512,
                                 crop_top=4, crop_left=8, target_height=96, target_width=32),
                         LIMITS, DEFAULTS)
    assert r.time_ids == [1024, 512, 4, 8, 96, 32] and not r.zero_negative
    r = parse_xl_request(_inputs(), LIMITS, DEFAULTS, force_zeros_for_empty_prompt=False)
    assert not r.zero_negative
    assert dataclasses.asdict(r)["prompt"] == "a cat"


@pytest.mark.parametrize("kw, message", [
    (dict(height=60), "'height' must be a multiple of 8, got 60"),
    (dict(crop_top=-1), "'crop_top' must be >= 0, got -1"),
    (dict(original_width=0), "'original_width' must be >= 1, got 0"),
    (dict(target_height=5000), "'target_height' must be <= 4096, got 5000"),
])
def test_bad_sdxl_inputs_are_named(kw, message):
    with pytest.raises(InvalidInput, match=message):
        parse_xl_request(_inputs(**kw), LIMITS, DEFAULTS)


def test_limits_from_the_spec_and_no_cuda_graphs(sdxl_tiny_dir):
    from uip.sd.accel import Acceleration

    assert SDXLLimits.from_settings({"max_size_condition": "2048"}).max_size_condition == 2048
    with pytest.raises(ValueError, match="unknown stable_diffusion limits"):
        SDXLLimits.from_settings({"max_crop": "1"})
    with pytest.raises(ValueError, match="cuda_graphs is not supported for SDXL"):
        UNetXL(sdxl_tiny_dir, accel=Acceleration(cuda_graphs=True))


def test_optional_spec_and_bench_settings():
    """specs/optional renders stable_diffusion_xl alone; `uip bench sd --config sdxl*` targets
    it (1024x1024 by default for SDXL base shapes)."""
    from uip.bench.sd import Settings
    from uip.core.paths import DEFAULT_SPECS
    from uip.spec.schema import load_specs

    (spec,) = load_specs(DEFAULT_SPECS / "optional")
    assert [m.name for m in spec.models] == ["stable_diffusion_xl"]
    assert spec.models[0].parameters["placement"] == "colocated"
    kw = dict(artifact=None, device="cpu", dtype=None, steps=2, size=None, guidance=5.0,
              scheduler="euler", concurrency=[1], requests_per_level=1, rounds=1, repeat=1,
              orchestrators=None, unet_queue_delay_us=None, placement=None, max_batch=None,
              sd_param=[], server_arg=[], url=None, skip_diffusers=True, skip_triton=True,
              out=None)
    xl = Settings(config="sdxl", **kw)
    assert (xl.model, xl.size, xl.orchestrators) == ("stable_diffusion_xl", 1024, 1)
    assert Settings(config="tiny", **kw).model == "stable_diffusion"
    with pytest.raises(ValueError, match="only the colocated placement"):
        Settings(config="sdxl-tiny", **{**kw, "placement": "separate"})
