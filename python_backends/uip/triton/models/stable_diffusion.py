"""`stable_diffusion` (Orchestrator): text -> UINT8 image [H, W, 3], in-flight step batching.

Not decoupled, so plain HTTP/gRPC infer work. ONE instance serves many requests at once:
`execute` only validates each request (limits from the spec: bad input answers INVALID_ARG at
once) and hands it to the instance's `uip.sd.batcher.StepBatcher`, then returns None; the
batcher's thread runs the iterations (one UNet call over all active requests of a latent size)
and answers each request through its response sender (Triton >= 24.01 lets a non-decoupled
model answer after `execute` returned). A cancelled request answers CANCELLED at the next
iteration and its slot goes to the next waiting request.

Placement (spec parameter `placement`): `separate` (default) calls the Mono models
`sd_text_encoder`, `sd_unet` and `sd_vae_decoder` through BLS (on a GPU, tensors pass by DLPack
and stay on the device); `colocated` loads the three networks into this process (one unit: no
IPC, less memory, the sub-models need not be deployed; the GPU speed parameters of
uip.sd.accel then apply here).

Spec parameters: `dtype` (float32 | float16: the wire dtype of the float tensors, as the SD
models' specs declare them; the networks' dtype when co-located), `max_batch` (8: requests
stepped together; sd_unet's max_batch_size must hold 2x as many CFG rows), `max_waiting` (64:
more are refused UNAVAILABLE), `default_steps` (50), `default_guidance_scale` (7.5), `eta`
(0.0, DDIM), `text_encoder_model` / `unet_model` / `vae_decoder_model` (model names),
`torch_threads` (the loop's own math; separate placement), `colocated_torch_threads` (default:
torch's own count, as the sd_* models run).

Metrics (Prometheus, label `model`): `uip_sd_iterations_total`, `uip_sd_unet_calls_total` and
`uip_sd_unet_rows_total` (so requests per UNet call = rows / calls / 2 with CFG, whatever the
placement), `uip_sd_encode_calls_total`, `uip_sd_decode_calls_total`, and the gauges
`uip_sd_active_requests` / `uip_sd_waiting_requests`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from uip.sd.accel import Acceleration
from uip.sd.batcher import StepBatcher
from uip.sd.loop import Cancelled, PipelineInfo, SDLoop, load_tokenizer
from uip.sd.models import TextEncoder, UNet, VaeDecoder, setup
from uip.sd.request import DEFAULT_SEED, SDDefaults, SDLimits, SDRequest, parse_request
from uip.sd.schedulers import SchedulerFactory
from uip.triton import pb
from uip.triton.stats_metrics import Stat, StatsMetrics

PLACEMENTS = ("separate", "colocated")
METRICS_PERIOD_S = 0.1
GAUGES = (Stat("active", "uip_sd_active_requests", "Requests stepped together now"),
          Stat("waiting", "uip_sd_waiting_requests", "Requests waiting for a slot (max_batch)"))
COUNTERS = (
    Stat("iterations", "uip_sd_iterations_total", "Step-batching iterations of the loop"),
    Stat("unet_calls", "uip_sd_unet_calls_total",
         "UNet calls (one per latent size per iteration, over all its requests)"),
    Stat("unet_rows", "uip_sd_unet_rows_total", "UNet rows run (a request with CFG counts 2)"),
    Stat("encode_calls", "uip_sd_encode_calls_total", "Text-encoder calls (prompts batched)"),
    Stat("decode_calls", "uip_sd_decode_calls_total", "VAE-decoder calls (images batched)"),
)


class StableDiffusion:
    limits_class = SDLimits  # hooks for uip.triton.models.stable_diffusion_xl
    default_guidance = 7.5

    def initialize(self, args: dict[str, str]) -> None:
        default_threads = torch.get_num_threads()
        self.settings, self.device, self.dtype = setup(args)
        s = self.settings
        folder = s.artifact_dir()
        info = PipelineInfo.from_folder(folder)
        self.schedulers = SchedulerFactory.from_folder(folder)
        limits = self.limits_class.from_settings(s.limits)
        if limits.max_steps > info.num_train_timesteps:  # set_timesteps refuses more
            limits = dataclasses.replace(limits, max_steps=info.num_train_timesteps)
        self.limits = limits
        height, width = info.default_size
        self.defaults = SDDefaults(
            steps=s.param("default_steps", 50, int),
            guidance_scale=s.param("default_guidance_scale", self.default_guidance, float),
            seed=s.param("default_seed", DEFAULT_SEED, int),
            height=s.param("default_height", height, int),
            width=s.param("default_width", width, int),
            scheduler=self.schedulers.default_name,
        )
        self.size_multiple = info.vae_scale_factor
        self.loop = self._make_loop(folder, info, default_threads)
        self.schedulers.warm_up()
        self.loop.tokenize("warm up")
        self.batcher = StepBatcher(self.loop, max_batch=s.param("max_batch", 8, int),
                                   max_waiting=s.param("max_waiting", 64, int)).start()
        self.metrics = StatsMetrics({"model": s.name}, GAUGES, COUNTERS).start(
            self.batcher.snapshot, METRICS_PERIOD_S, s.name)

    def _make_loop(self, folder, info: PipelineInfo, default_threads: int) -> SDLoop:
        s = self.settings
        self.models = {
            "text": s.param("text_encoder_model", "sd_text_encoder"),
            "unet": s.param("unet_model", "sd_unet"),
            "vae": s.param("vae_decoder_model", "sd_vae_decoder"),
        }
        self.placement = s.param("placement", "separate")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"parameter placement must be one of {PLACEMENTS}, "
                             f"got {self.placement!r}")
        encode, unet, decode = self._encode, self._unet, self._decode
        if self.placement == "colocated":  # GPU speed parameters: uip.sd.accel
            # the networks run here: torch's own thread count, as in the sd_* models (the
            # spec's torch_threads is for the loop's math alone; another count moves last bits)
            torch.set_num_threads(s.param("colocated_torch_threads", default_threads, int))
            accel = Acceleration.from_settings(s, self.device)
            encode = TextEncoder(folder, self.device, self.dtype)
            unet = UNet(folder, self.device, self.dtype, accel=accel)
            decode = VaeDecoder(folder, self.device, self.dtype, accel=accel)
        return SDLoop(load_tokenizer(folder), self.schedulers, info, encode, unet, decode,
                      device=self.device, eta=s.param("eta", 0.0, float))

    # --- the three models, called through BLS (placement: separate) --------------------------
    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        out = pb.infer(self.models["text"], {"input_ids": ids.to(torch.int64)},
                       ["last_hidden_state"], self.device)
        return out["last_hidden_state"]

    def _unet(self, latents: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        inputs = {
            "sample": latents.to(self.dtype),
            "timestep": t.to(self.device, torch.float32).reshape(-1, 1),
            "encoder_hidden_states": hidden.to(self.dtype),
        }
        return pb.infer(self.models["unet"], inputs, ["noise_pred"], self.device)["noise_pred"]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = pb.infer(self.models["vae"], {"latents": latents.to(self.dtype)}, ["image"])
        return out["image"]

    # --- requests ---------------------------------------------------------------------------
    def _submit(self, request) -> None:
        sender = request.get_response_sender()
        try:
            req = self._parse(pb.inputs_of(request))
            self.schedulers.check_steps(req.scheduler, req.steps)
            self.batcher.submit(req, sender.is_cancelled,
                                lambda image, error: _answer(sender, image, error))
        except Exception as exc:  # noqa: BLE001 - INVALID_ARG / UNAVAILABLE / INTERNAL
            sender.send(pb.error_response(exc), flags=pb.final_flag())

    def _parse(self, inputs) -> SDRequest:
        return parse_request(inputs, self.limits, self.defaults,
                             check_scheduler=self.schedulers.check,
                             size_multiple=self.size_multiple)

    def execute(self, requests):
        for request in requests:
            self._submit(request)
        return None  # answered by the batcher's thread, through each request's sender

    def finalize(self) -> None:
        self.metrics.close()
        self.batcher.stop()
        self.loop = None


def _answer(sender, image: np.ndarray | None, error: BaseException | None) -> None:
    if isinstance(error, Cancelled):
        sender.send(pb.cancelled_response("request cancelled by the client"),
                    flags=pb.final_flag())
    elif error is not None:
        sender.send(pb.error_response(error), flags=pb.final_flag())
    else:
        pb.send(sender, {"image": image[None]}, final=True)
