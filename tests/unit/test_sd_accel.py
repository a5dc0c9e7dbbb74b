"""uip.sd.accel: the GPU speed parameters as the spec gives them (CUDA graphs need a GPU:
their capture is measured by benchmarks/gpu/run_sd.sh, not here)."""

from __future__ import annotations

import json

import pytest
import torch

from uip.core.settings import ModelSettings
from uip.sd.accel import Acceleration


def _settings(**params: str) -> ModelSettings:
    return ModelSettings(name="sd_unet", parameters=dict(params))


def test_defaults_per_device():
    cpu, gpu = (Acceleration.from_settings(_settings(), d) for d in ("cpu", "cuda:0"))
    assert not cpu.channels_last and gpu.channels_last  # NHWC only pays on the GPU
    assert not (cpu.compile or cpu.cuda_graphs or gpu.compile or gpu.cuda_graphs)
    assert gpu.graph_buckets == (1, 2, 4, 8, 16)


def test_parameters_are_read_and_checked():
    a = Acceleration.from_settings(_settings(
        compile="true", compile_mode="max-autotune-no-cudagraphs", compile_dynamic="false",
        cuda_graphs="yes", graph_buckets="16, 2,8", compile_cache_dir="/tmp/x"), "cuda:1")
    assert a.compile and a.cuda_graphs and not a.compile_dynamic
    assert a.graph_buckets == (2, 8, 16) and a.compile_cache_dir == "/tmp/x"
    assert a.compile_mode == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="cuda_graphs needs a GPU"):
        Acceleration.from_settings(_settings(cuda_graphs="true"), "cpu")
    with pytest.raises(ValueError, match="graph_buckets"):
        Acceleration.from_settings(_settings(graph_buckets="0,2"), "cuda:0")


def test_prepare_channels_last_and_compile():
    conv = torch.nn.Conv2d(4, 8, 3)
    same = Acceleration().prepare(conv, compile_it=False)
    assert same is conv and conv.weight.is_contiguous()
    fn = Acceleration(channels_last=True).prepare(conv, compile_it=True, fn=conv.forward)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fn is not conv.forward and callable(fn)  # compiled lazily, on its first call


def test_fuse_qkv_inductor_flags_and_sdpa_are_read_and_checked():
    a = Acceleration.from_settings(_settings(
        fuse_qkv="true", inductor="conv_1x1_as_mm=1, epilogue_fusion=0,coordinate_descent_tuning",
        sdpa="flash"), "cuda:0")
    assert a.fuse_qkv and a.sdpa == "flash"
    assert a.inductor == (("conv_1x1_as_mm", "1"), ("epilogue_fusion", "0"),
                          ("coordinate_descent_tuning", "1"))
    with pytest.raises(ValueError, match="sdpa must be one of"):
        Acceleration.from_settings(_settings(sdpa="fastest"), "cuda:0")
    with pytest.raises(ValueError, match="no flag 'not_a_flag'"):
        Acceleration(inductor=(("not_a_flag", "1"),)).prepare(torch.nn.Linear(2, 2), True)


def test_fuse_qkv_calls_the_modules_own_fusion():
    calls = []

    class Fusable(torch.nn.Linear):
        def fuse_qkv_projections(self):
            calls.append(True)

    Acceleration(fuse_qkv=True).prepare(Fusable(2, 2), compile_it=False)
    assert calls == [True]


def test_compiled_vae_warms_at_start_and_decodes_per_image_with_static_shapes(sd_tiny_dir,
                                                                             monkeypatch):
    """`compile_vae` compiles at start-up on one latent of the default size; with static
    shapes a batch is decoded one image at a time (no new shape to compile while serving),
    equal to the batched eager decode. torch.compile is replaced by a recorder here."""
    from uip.sd.models import VaeDecoder

    shapes: list[tuple[int, ...]] = []

    def fake_compile(fn, **_):
        def run(latents, **kw):
            shapes.append(tuple(latents.shape))
            return fn(latents, **kw)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    eager = VaeDecoder(sd_tiny_dir)
    vae = VaeDecoder(sd_tiny_dir, model=eager.model,
                     accel=Acceleration(compile_vae=True, compile_dynamic=False))
    size = json.loads((sd_tiny_dir / "unet" / "config.json").read_text())["sample_size"]
    channels = eager.model.config.latent_channels
    assert shapes == [(1, channels, size, size)]  # the start-up compile
    latents = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    images = vae(latents)
    assert shapes[1:] == [(1, channels, size, size)] * 3
    assert (images.int() - eager(latents).int()).abs().max() <= 1  # batched vs one by one
    dynamic = VaeDecoder(sd_tiny_dir, model=eager.model, accel=Acceleration(compile_vae=True))
    shapes.clear()
    dynamic(latents)
    assert shapes == [(3, channels, size, size)]  # dynamic shapes: one batched call


def test_cudnn_benchmark_is_read_and_set_by_prepare(monkeypatch):
    assert not Acceleration.from_settings(_settings(), "cuda:0").cudnn_benchmark
    a = Acceleration.from_settings(_settings(cudnn_benchmark="true"), "cuda:0")
    assert a.cudnn_benchmark
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    Acceleration().prepare(torch.nn.Linear(2, 2), compile_it=False)
    assert torch.backends.cudnn.benchmark is False
    a.prepare(torch.nn.Linear(2, 2), compile_it=False)
    assert torch.backends.cudnn.benchmark is True


def test_self_attention_is_read_and_checked():
    assert Acceleration.from_settings(_settings(), "cuda:0").self_attention == "sdpa"
    a = Acceleration.from_settings(_settings(self_attention="cudnn"), "cuda:0")
    assert a.self_attention == "cudnn"
    with pytest.raises(ValueError, match="self_attention must be one of"):
        Acceleration.from_settings(_settings(self_attention="flash3"), "cuda:0")
    with pytest.raises(ValueError, match="self_attention cudnn needs a GPU"):
        Acceleration.from_settings(_settings(self_attention="cudnn"), "cpu")


@pytest.mark.parametrize("fuse", [False, True])
def test_cudnn_self_attention_processor_equals_diffusers(sd_tiny_dir, fuse):
    """The processor (its CPU path: SDPA on the contiguous q/k/v it gives cuDNN on the GPU)
    serves only the UNet's self-attention layers and leaves the UNet's output as diffusers'
    own processors give it, with and without fused q/k/v."""
    from uip.sd.attention import CudnnSelfAttention
    from uip.sd.models import UNet

    ref, ours = (UNet(sd_tiny_dir) for _ in range(2))
    if fuse:
        ref.model.fuse_qkv_projections()
    Acceleration(fuse_qkv=fuse, self_attention="cudnn").prepare(ours.model, compile_it=False)
    kinds = {type(p).__name__ for p in ours.model.attn_processors.values()}
    served = [n for n, p in ours.model.attn_processors.items()
              if isinstance(p, CudnnSelfAttention)]
    assert served and all(".attn1." in n for n in served) and len(kinds) == 2
    g = torch.Generator().manual_seed(0)
    config = ours.model.config
    x = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, generator=g)
    h = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    t = torch.tensor([10.0, 500.0])
    torch.testing.assert_close(ours(x, t, h), ref(x, t, h), rtol=1e-5, atol=1e-5)
