"""SDXL-shaped sampling, step for step as diffusers' StableDiffusionXLPipeline, on the same
step batcher as SD 1.x (uip.sd.batcher drives `SDXLLoop` as it drives `SDLoop`).

What differs from uip.sd.loop, and how it stays bit-exact with the pipeline:
- two tokenizers and text encoders: each encoder's penultimate hidden state, concatenated on
  the last axis, is the UNet's `encoder_hidden_states`; the second encoder's projected pooled
  output is `text_embeds` (prompts in one call per encoder, negatives in another);
- an absent negative prompt with `force_zeros_for_empty_prompt` gives zero embeddings;
- `time_ids` per request (uip.sd.xl_request), the same for the negative and positive rows;
- the scheduler's `set_begin_index(0)` before the first step, as the pipeline calls it;
- one UNet call per iteration over every active request: their rows' `text_embeds` and
  `time_ids` concatenated like the hidden states (`added_cond_kwargs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from uip.sd.loop import Decode, Job, PipelineInfo, SDLoop
from uip.sd.schedulers import SchedulerFactory
from uip.sd.xl_request import SDXLRequest

# ids [B, L] -> (penultimate hidden [B, L, D], pooled [B, P] or None)
EncodeXL = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# x, t [B], hidden, text_embeds [B, P], time_ids [B, 6] -> eps
UNetXL = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class XLInfo:
    """What an SDXL folder adds to PipelineInfo, read without loading weights."""

    force_zeros_for_empty_prompt: bool

    @classmethod
    def from_folder(cls, folder: Path) -> XLInfo:
        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        missing = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"} - set(index)
        if unet.get("addition_embed_type") != "text_time" or missing:
            raise ValueError(f"{folder} is not an SDXL pipeline folder (two text encoders and "
                             "a UNet with addition_embed_type 'text_time')")
        if vae.get("latents_mean") is not None:
            raise ValueError(f"{folder}: VAEs with latents_mean/latents_std are not supported")
        return cls(force_zeros_for_empty_prompt=bool(
            index.get("force_zeros_for_empty_prompt", True)))


def load_tokenizers(folder: Path):
    from transformers import AutoTokenizer

    return tuple(AutoTokenizer.from_pretrained(Path(folder) / sub)
                 for sub in ("tokenizer", "tokenizer_2"))


class SDXLJob(Job):
    def __init__(self, req: SDXLRequest, schedulers: SchedulerFactory, info: PipelineInfo,
                 device: torch.device, eta: float = 0.0):
        super().__init__(req, schedulers, info, device, eta)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self.text_embeds: torch.Tensor | None = None  # [rows, P]
        self.time_ids: torch.Tensor | None = None  # [rows, 6]

    def begin_xl(self, positive: torch.Tensor, negative: torch.Tensor | None,
                 pooled: torch.Tensor, negative_pooled: torch.Tensor | None) -> None:
        self.begin(positive, negative)
        dtype = self.hidden.dtype
        self.text_embeds = (torch.cat([negative_pooled.to(dtype), pooled.to(dtype)])
                            if self.guided else pooled.to(dtype))
        self.time_ids = torch.tensor([self.req.time_ids], dtype=dtype,
                                     device=self.hidden.device).repeat(self.rows, 1)


class SDXLLoop(SDLoop):
    """SDLoop with SDXL's two encoders and added conditioning; `tokenizers` and `encoders` are
    (first, second) pairs."""

    def __init__(self, tokenizers, schedulers: SchedulerFactory, info: PipelineInfo,
                 encoders: tuple[EncodeXL, EncodeXL], unet: UNetXL, decode: Decode,
                 device: str | torch.device = "cpu", eta: float = 0.0):
        super().__init__(tokenizers[0], schedulers, info, encoders[0], unet, decode, device, eta)
        self.tokenizers = tuple(tokenizers)
        self.encoders = tuple(encoders)

    def job(self, req: SDXLRequest) -> SDXLJob:
        return SDXLJob(req, self.schedulers, self.info, self.device, self.eta)

    def _encode(self, texts: list[str], max_length: int | None = None):
        """Both encoders: (concatenated penultimate hidden states, the second's pooled)."""
        hidden, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders, strict=True):
            ids = tok(texts, padding="max_length", max_length=max_length or tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            h, p = enc(ids)
            hidden.append(h)
            pooled = p if p is not None else pooled
        out = torch.cat([h.to(hidden[-1].dtype) for h in hidden], dim=-1)
        return out, pooled.to(out.dtype)

    def begin(self, jobs: list[SDXLJob]) -> None:
        positive, pooled = self._encode([j.req.prompt for j in jobs])
        encoded = [j for j in jobs if j.guided and not j.req.zero_negative]
        negative: dict[int, tuple] = {}
        if encoded:
            h, p = self._encode([j.req.negative_prompt for j in encoded], positive.shape[1])
            negative = {id(j): (h[k:k + 1], p[k:k + 1]) for k, j in enumerate(encoded)}
        for k, j in enumerate(jobs):
            pos, pool = positive[k:k + 1], pooled[k:k + 1]
            neg = negative.get(id(j), (torch.zeros_like(pos), torch.zeros_like(pool)))
            j.begin_xl(pos, neg[0] if j.guided else None, pool, neg[1] if j.guided else None)

    def _predict(self, jobs: list[SDXLJob], x, t, hidden) -> torch.Tensor:
        text_embeds = torch.cat([j.text_embeds for j in jobs])
        time_ids = torch.cat([j.time_ids for j in jobs])
        return self.unet(x, t, hidden, text_embeds, time_ids)
