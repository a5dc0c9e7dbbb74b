"""`stable_diffusion` (Orchestrator, BLS): text -> UINT8 image [H, W, 3].

Not decoupled, so plain HTTP/gRPC infer work; concurrency comes from the spec's instance count.
Each request: validate (limits from the spec), tokenize, `sd_text_encoder`, the sampling loop
with a fresh scheduler and a seeded generator (uip.sd.loop.SDLoop) calling `sd_unet` once per
step, `sd_vae_decoder`. `request.is_cancelled()` is polled before every step: a cancelled
request stops and answers CANCELLED. On a GPU instance the tensors stay on the device (DLPack).

Spec parameters: `dtype` (float32 | float16: the wire dtype of the float tensors, as the SD
models' specs declare them), `default_steps` (50), `default_guidance_scale` (7.5), `eta` (0.0,
DDIM), `text_encoder_model` / `unet_model` / `vae_decoder_model` (model names), `torch_threads`,
`step_gate` (true: concurrent loops wait for each other's UNet calls so their steps merge, see
uip.sd.gate), `step_gate_max_wait_s` (5).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from uip.sd.gate import StepGate, shape_key
from uip.sd.loop import Cancelled, PipelineInfo, SDLoop, load_tokenizer
from uip.sd.models import setup
from uip.sd.request import DEFAULT_SEED, SDDefaults, SDLimits, parse_request
from uip.sd.schedulers import SchedulerFactory
from uip.triton import pb


class StableDiffusion:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, self.dtype = setup(args)
        s = self.settings
        folder = s.artifact_dir()
        info = PipelineInfo.from_folder(folder)
        self.schedulers = SchedulerFactory.from_folder(folder)
        limits = SDLimits.from_settings(s.limits)
        if limits.max_steps > info.num_train_timesteps:  # set_timesteps refuses more
            limits = dataclasses.replace(limits, max_steps=info.num_train_timesteps)
        self.limits = limits
        height, width = info.default_size
        self.defaults = SDDefaults(
            steps=s.param("default_steps", 50, int),
            guidance_scale=s.param("default_guidance_scale", 7.5, float),
            seed=s.param("default_seed", DEFAULT_SEED, int),
            height=s.param("default_height", height, int),
            width=s.param("default_width", width, int),
            scheduler=self.schedulers.default_name,
        )
        self.size_multiple = info.vae_scale_factor
        self.models = {
            "text": s.param("text_encoder_model", "sd_text_encoder"),
            "unet": s.param("unet_model", "sd_unet"),
            "vae": s.param("vae_decoder_model", "sd_vae_decoder"),
        }
        self.loop = SDLoop(load_tokenizer(folder), self.schedulers, info, self._encode,
                           self._unet, self._decode, device=self.device,
                           eta=s.param("eta", 0.0, float))
        self.gate = None
        if s.param("step_gate", True, bool):  # line concurrent loops up (see uip.sd.gate)
            self.gate = StepGate(f"{s.name}-{os.getppid()}-{self.device}",
                                 max_wait_s=s.param("step_gate_max_wait_s", 5.0, float))
        self.schedulers.warm_up()
        self.loop.tokenize("warm up")

    # --- the three models, called through BLS -----------------------------------------------
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
        gate = self.gate
        if gate is not None:
            key = shape_key(tuple(latents.shape[1:]))
            gate.wait(key)
            gate.begin(key)
        try:
            out = pb.infer(self.models["unet"], inputs, ["noise_pred"], self.device)
        finally:
            if gate is not None:
                gate.end()
        return out["noise_pred"]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = pb.infer(self.models["vae"], {"latents": latents.to(self.dtype)}, ["image"])
        return out["image"]

    # --- requests ---------------------------------------------------------------------------
    def _one(self, request):
        req = parse_request(pb.inputs_of(request), self.limits, self.defaults,
                            check_scheduler=self.schedulers.check,
                            size_multiple=self.size_multiple)
        self.schedulers.check_steps(req.scheduler, req.steps)
        if self.gate is not None:
            self.gate.start_loop()
        try:
            image = self.loop(req, cancelled=request.is_cancelled)
        except Cancelled:
            return pb.cancelled_response("request cancelled by the client")
        return {"image": image[None]}

    def execute(self, requests):
        # INVALID_ARG for bad input, CANCELLED for a client cancel, else INTERNAL
        return pb.respond_each(requests, self._one)

    def finalize(self) -> None:
        self.loop = None
        if self.gate is not None:
            self.gate.close()

