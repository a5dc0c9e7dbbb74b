"""The Stable Diffusion sampling loop, step for step as diffusers' StableDiffusionPipeline.

Pure logic: the three networks are callables (in-process modules in tests and in the
co-located placement, BLS calls to `sd_text_encoder`, `sd_unet` and `sd_vae_decoder` in the
separate one). One request's sampling state is a `Job` (its own scheduler, seeded generator,
latents and step index); `uip.sd.batcher.StepBatcher` steps many jobs with one UNet call per
iteration, `SDLoop` runs one alone. What keeps them bit-exact with the pipeline:
- prompt and negative prompt are tokenized to the tokenizer's max length (77) and encoded
  separately (one encoder call for the prompts, one for the negatives), as `encode_prompt`
  does; CFG only when guidance_scale > 1;
- a fresh scheduler per request, `set_timesteps` first; the initial noise comes from
  `randn_tensor` with a CPU generator seeded per request, times `init_noise_sigma`;
- per step: `scale_model_input` on the request's [negative, positive] batch, ONE UNet call
  holding that pair (with other requests' pairs when batched: the last bits may change),
  guidance, `scheduler.step(..., eta/generator only if its signature takes them)`;
- `decode` gets the final latents (the VAE model divides by its scaling factor).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from uip.sd.request import SDRequest
from uip.sd.schedulers import SchedulerFactory

Encode = Callable[[torch.Tensor], torch.Tensor]  # ids [B, L] int64 -> hidden [B, L, D]
UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # x, t[B], h -> eps
Decode = Callable[[torch.Tensor], torch.Tensor | np.ndarray]  # latents -> uint8 [B, H, W, 3]


class Cancelled(Exception):
    """The request was cancelled by its client; the loop stopped before its next UNet call."""


@dataclass(frozen=True)
class PipelineInfo:
    """What the loop needs to know about a diffusers SD folder, without loading weights."""

    latent_channels: int
    vae_scale_factor: int
    sample_size: tuple[int, int]  # the UNet's latent size: default image = this x scale factor
    num_train_timesteps: int

    @classmethod
    def from_folder(cls, folder: Path) -> PipelineInfo:
        folder = Path(folder)
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if unet.get("time_cond_proj_dim") is not None:
            raise ValueError(f"{folder}: UNets with time_cond_proj_dim (LCM) are not supported")
        size = unet.get("sample_size", 64)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(
            latent_channels=int(unet.get("in_channels", 4)),
            vae_scale_factor=2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1),
            sample_size=(int(size[0]), int(size[1])),
            num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        )

    @property
    def default_size(self) -> tuple[int, int]:
        return (self.sample_size[0] * self.vae_scale_factor,
                self.sample_size[1] * self.vae_scale_factor)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder) / "tokenizer")


def _never() -> bool:
    return False


class Job:
    """One request's sampling state: its own scheduler, seeded generator, latents and step."""

    def __init__(self, req: SDRequest, schedulers: SchedulerFactory, info: PipelineInfo,
                 device: torch.device, eta: float = 0.0):
        self.req = req
        self.guided = req.guidance_scale > 1.0
        self.scheduler = schedulers.create(req.scheduler)
        # The scheduler's timesteps stay on the host (its `if prev_t >= 0`, `alphas[t]` would
        # each wait for the GPU); the UNet gets a device copy, made once.
        self.scheduler.set_timesteps(req.steps, device="cpu")
        self.timesteps = self.scheduler.timesteps
        self.unet_timesteps = self.timesteps.to(device, torch.float32)
        self.generator = torch.Generator(device="cpu").manual_seed(req.seed)
        self.device = device
        s = info.vae_scale_factor
        self.latent_shape = (info.latent_channels, req.height // s, req.width // s)
        params = set(inspect.signature(self.scheduler.step).parameters)
        self.extra: dict = {}
        if "eta" in params:
            self.extra["eta"] = eta
        if "generator" in params:
            self.extra["generator"] = self.generator
        self.index = 0
        self.hidden: torch.Tensor | None = None  # [negative, positive] (or [positive])
        self.latents: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """Samples of this request in a UNet call: its CFG pair, or one."""
        return 2 if self.guided else 1

    @property
    def finished(self) -> bool:
        return self.index >= len(self.timesteps)

    def begin(self, positive: torch.Tensor, negative: torch.Tensor | None) -> None:
        """The prompt's embeddings ([1, L, D] each) arrived: draw the initial noise."""
        hidden = positive
        if self.guided:
            hidden = torch.cat([negative.to(positive.dtype), positive])
        self.hidden = hidden
        latents = randn_tensor((1, *self.latent_shape), generator=self.generator,
                               device=self.device, dtype=hidden.dtype)
        self.latents = latents * self.scheduler.init_noise_sigma

    def unet_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's UNet input [rows, C, h, w] and its timestep per sample [rows]."""
        x = torch.cat([self.latents] * 2) if self.guided else self.latents
        x = self.scheduler.scale_model_input(x, self.timesteps[self.index])
        return x, self.unet_timesteps[self.index].reshape(1).expand(x.shape[0])

    def step(self, noise: torch.Tensor) -> None:
        """The UNet's prediction for this request's rows: guidance, then the scheduler step."""
        t = self.timesteps[self.index]
        if self.guided:
            uncond, text = noise.chunk(2)
            noise = uncond + self.req.guidance_scale * (text - uncond)
        self.latents = self.scheduler.step(noise, t, self.latents, **self.extra,
                                           return_dict=False)[0]
        self.index += 1


class SDLoop:
    """text -> image for one request at a time, calling `encode`, `unet` and `decode` like
    StableDiffusionPipeline does (the batcher's logic, with a batch of one)."""

    def __init__(self, tokenizer, schedulers: SchedulerFactory, info: PipelineInfo,
                 encode: Encode, unet: UNet, decode: Decode, device: str | torch.device = "cpu",
                 eta: float = 0.0):
        self.tokenizer = tokenizer
        self.schedulers = schedulers
        self.info = info
        self.encode = encode
        self.unet = unet
        self.decode = decode
        self.device = torch.device(device)
        self.eta = eta

    def job(self, req: SDRequest) -> Job:
        return Job(req, self.schedulers, self.info, self.device, self.eta)

    def tokenize(self, texts: str | list[str], max_length: int | None = None) -> torch.Tensor:
        """Token ids [B, 77]: padded to and truncated at the tokenizer's max length."""
        return self.tokenizer(
            texts, padding="max_length",
            max_length=max_length or self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    def begin(self, jobs: list[Job]) -> None:
        """Encode the jobs' prompts in one call, their negative prompts in another."""
        positive = self.encode(self.tokenize([j.req.prompt for j in jobs]))
        guided = [j for j in jobs if j.guided]
        negative = {}
        if guided:
            out = self.encode(self.tokenize([j.req.negative_prompt for j in guided],
                                            positive.shape[1]))
            negative = {id(j): out[k:k + 1] for k, j in enumerate(guided)}
        for k, j in enumerate(jobs):
            j.begin(positive[k:k + 1], negative.get(id(j)))

    def step(self, jobs: list[Job]) -> None:
        """One UNet call over the jobs (all of one latent shape), then each scheduler's step."""
        inputs = [j.unet_input() for j in jobs]
        x = torch.cat([i[0] for i in inputs]) if len(jobs) > 1 else inputs[0][0]
        t = torch.cat([i[1] for i in inputs])
        hidden = torch.cat([j.hidden for j in jobs]) if len(jobs) > 1 else jobs[0].hidden
        noise = self._predict(jobs, x, t, hidden)
        for j, part in zip(jobs, torch.split(noise, [j.rows for j in jobs]), strict=True):
            j.step(part)

    def _predict(self, jobs: list[Job], x: torch.Tensor, t: torch.Tensor,
                 hidden: torch.Tensor) -> torch.Tensor:
        """The batched UNet call (uip.sd.xl_loop adds SDXL's conditioning here)."""
        return self.unet(x, t, hidden)

    def finish(self, jobs: list[Job]) -> list[np.ndarray]:
        """Decode the finished jobs (one latent shape) in one call: uint8 [H, W, 3] each."""
        latents = torch.cat([j.latents for j in jobs]) if len(jobs) > 1 else jobs[0].latents
        image = self.decode(latents)
        if isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        image = np.asarray(image)
        return [image[k] for k in range(len(jobs))]

    def __call__(self, req: SDRequest, cancelled: Callable[[], bool] = _never,
                 on_step: Callable[[int, torch.Tensor], None] | None = None) -> np.ndarray:
        """The image, uint8 [H, W, 3]; raises Cancelled when `cancelled()` turns true."""
        if cancelled():
            raise Cancelled()
        job = self.job(req)
        self.begin([job])
        while not job.finished:
            if cancelled():
                raise Cancelled()
            i, t = job.index, job.timesteps[job.index]
            self.step([job])
            if on_step is not None:
                on_step(i, t)
        if cancelled():
            raise Cancelled()
        return self.finish([job])[0]
