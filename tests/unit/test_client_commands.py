"""`uip bench sd`, `uip bench MODEL` and `uip txt2img`: their command lines, no server."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from uip.bench import cli as bench_cli
from uip.bench import sd
from uip.clients import cli as clients_cli


@pytest.fixture()
def uip() -> typer.Typer:
    app = typer.Typer()
    bench_cli.register(app)
    clients_cli.register(app)
    return app


def invoke(app: typer.Typer, *argv: str):
    return CliRunner().invoke(app, list(argv), catch_exceptions=False)


def bench_sd_settings(app, monkeypatch, *argv: str) -> sd.Settings:
    got = []
    monkeypatch.setattr(sd, "run", got.append)
    r = invoke(app, "bench", "sd", *argv)
    assert r.exit_code == 0, r.output
    return got[0]


def test_bench_sd_cpu_defaults_and_flags(uip, monkeypatch, tmp_path):
    s = bench_sd_settings(uip, monkeypatch, "--steps", "4", "--concurrency", "1,2",
                          "--requests-per-level", "2", "--rounds", "1", "--placement",
                          "colocated", "--max-batch", "4", "--sd-param", "compile=true",
                          "--server-arg=--log-info=1", "--server-arg", "--exit-timeout-secs=5",
                          "--skip-diffusers", "--out", str(tmp_path / "t.md"))
    assert (s.config, s.device, s.dtype, s.size, s.scheduler) == ("tiny", "cpu", "float32", 64,
                                                                   "ddim")
    assert (s.steps, s.concurrency, s.requests_per_level, s.rounds) == (4, [1, 2], 2, 1)
    assert s.orchestrators == sd.spec_instances()  # the spec's count on CPU
    assert (s.placement, s.max_batch, s.sd_param) == ("colocated", 4, ["compile=true"])
    assert s.skip_diffusers and not s.skip_triton
    assert s.server_arg == ["--log-info=1", "--exit-timeout-secs=5"]
    assert (s.url, s.artifact, s.unet_queue_delay_us, s.out) == (None, None, None,
                                                                 tmp_path / "t.md")


def test_bench_sd_cuda_defaults(uip, monkeypatch):
    s = bench_sd_settings(uip, monkeypatch, "--config", "sd15", "--device", "cuda",
                          "--concurrency", "1,8", "--unet-queue-delay-us", "5000")
    assert (s.dtype, s.size, s.unet_queue_delay_us) == ("float16", 512, 5000)
    assert s.orchestrators == sd.spec_instances()  # one instance batches the steps itself
    assert s.placement is None and s.sd_param == [] and s.server_arg == []


def test_bench_sd_refuses_an_unknown_config(uip):
    r = CliRunner().invoke(uip, ["bench", "sd", "--config", "sd99"])
    assert r.exit_code == 2


@pytest.mark.parametrize("model", sorted(bench_cli.PROFILES))
def test_bench_profiles_keep_their_options(uip, monkeypatch, model):
    calls = []
    params = set(inspect.signature(bench_cli.bench).parameters) - {"model"}
    monkeypatch.setattr(bench_cli, "bench", lambda m, **kw: calls.append((m, kw)))
    r = invoke(uip, "bench", model, "--concurrency", "1,8", "--label", "x")
    assert r.exit_code == 0, r.output
    (got, options), = calls
    assert got == model and set(options) == params
    assert (options["concurrency"], options["label"], options["measurement_ms"]) == ("1,8", "x",
                                                                                     3000)


def test_bench_sd_table():
    s = sd.Settings(config="tiny", artifact=None, device="cpu", dtype=None, steps=4, size=None,
                    guidance=7.5, scheduler="ddim", concurrency=[1, 2], requests_per_level=2,
                    rounds=1, repeat=1, orchestrators=4, unet_queue_delay_us=None,
                    placement=None, max_batch=None, sd_param=[], server_arg=[], url=None,
                    skip_diffusers=False,
                    skip_triton=False, out=None)
    s.triton_image = s.diffusers_image = np.zeros((64, 64, 3), np.uint8)
    rows = [dict(engine="Triton stable_diffusion (gRPC)", c=2, n=2, lat=0.5, p50=0.4, ips=3.0,
                 merged=1.96, unet="14.9 / 2.1"),
            dict(engine="diffusers in-process (batch = C)", c=2, n=2, lat=0.25, p50=0.25,
                 ips=8.0, merged=float("nan"), unet="")]
    lines = sd.table(s, rows, Path("sd-tiny")).splitlines()
    assert "model `sd-tiny` (tiny, float32); 64x64, 4 steps, scheduler ddim" in lines[0]
    assert lines[2] == "Image check (seed 0, served alone): Triton vs diffusers identical."
    assert lines[-2] == ("| Triton stable_diffusion (gRPC) | 2 | 2 | 0.500 | 0.400 | 3.00 | 1.96 "
                         "| 14.9 / 2.1 |")
    assert lines[-1] == "| diffusers in-process (batch = C) | 2 | 2 | 0.250 | 0.250 | 8.00 |  |  |"


def test_txt2img_passes_the_options_it_was_given(uip, monkeypatch, tmp_path):
    calls = []

    def fake(prompt, output, **kw):
        calls.append((prompt, output, kw))
        return np.zeros((8, 16, 3), np.uint8), 0.1

    monkeypatch.setattr("uip.clients.sd.txt2img", fake)
    out = tmp_path / "a.png"
    r = invoke(uip, "txt2img", "a boat", "-o", str(out), "--steps", "3", "--seed", "9",
               "--scheduler", "dpm++", "--negative", "blurry", "--protocol", "http")
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (16x8)" in r.output
    (prompt, output, kw), = calls
    assert (prompt, output) == ("a boat", out)
    assert kw == dict(protocol="http", url=None, model="stable_diffusion", timeout=600.0,
                      negative_prompt="blurry", steps=3, guidance_scale=None, seed=9,
                      height=None, width=None, scheduler="dpm++")


def test_txt2img_refuses_an_unknown_scheduler(uip):
    from uip.sd.schedulers import SCHEDULERS

    r = CliRunner().invoke(uip, ["txt2img", "a boat", "--scheduler", "fast"])
    assert r.exit_code == 2
    assert all(name in r.output for name in SCHEDULERS)
