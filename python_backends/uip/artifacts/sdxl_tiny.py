"""A tiny SDXL pipeline folder, built offline and deterministically (default artifact
`sdxl-tiny`).

A plain diffusers `StableDiffusionXLPipeline` layout (model_index.json, tokenizer/,
tokenizer_2/, text_encoder/, text_encoder_2/, unet/, vae/, scheduler/): what the SDXL base
folder holds, with tiny shapes and weights from fixed seeds, so any real SDXL folder can take
its place in the spec.
- two CLIP text encoders: `CLIPTextModel` (hidden 32) and `CLIPTextModelWithProjection`
  (hidden 48, projection 24: the pooled embedding); different widths, so the UNet's
  cross-attention width (80) only fits their concatenation;
- the tokenizers are made as sd-tiny's (uip.artifacts.sd_tiny: BPE merges learnt from a
  built-in word list); tokenizer_2 pads with "!" as SDXL's does;
- a UNet with `addition_embed_type="text_time"` (pooled text embedding + 6 time ids), sample
  size 8, and sd-tiny's VAE shape (scale factor 8): 64x64 images by default (1024x1024 for
  the real SDXL's sample size 128);
- SDXL's scheduler: EulerDiscreteScheduler with SDXL base's settings.
"""

from __future__ import annotations

from pathlib import Path

from uip.artifacts.sd_tiny import SPECIAL_BOS, SPECIAL_EOS, write_clip_tokenizer_files

SCHEDULER_CONFIG = dict(  # stable-diffusion-xl-base-1.0's scheduler (Euler) settings
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    prediction_type="epsilon", use_karras_sigmas=False,
)


def _shapes(config: str) -> dict:
    """Text encoders, UNet and VAE shapes: `tiny` (the artifact) or `sdxl` (SDXL base's
    shapes with random weights, ~3.5B parameters: for GPU benchmarks, never for tests)."""
    if config == "tiny":
        text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                    num_attention_heads=4, projection_dim=32, hidden_act="quick_gelu")
        text_2 = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, projection_dim=24, hidden_act="gelu")
        time_dim = 8  # addition_time_embed_dim: per time id (6 of them)
        unet = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2))
        vae = dict(block_out_channels=(32, 32, 64, 64), sample_size=64)
    elif config == "sdxl":
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu",
                    vocab_size=49408)
        text_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, projection_dim=1280, hidden_act="gelu",
                      vocab_size=49408)
        time_dim = 256
        unet = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10))
        vae = dict(block_out_channels=(128, 256, 512, 512), sample_size=1024)
    else:
        raise ValueError(f"unknown SDXL shape config {config!r}; use 'tiny' or 'sdxl'")
    unet.update(use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=time_dim,
                cross_attention_dim=text["hidden_size"] + text_2["hidden_size"],
                projection_class_embeddings_input_dim=6 * time_dim + text_2["projection_dim"])
    vae.update(scaling_factor=0.13025, force_upcast=True,
               down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4)
    return dict(text=text, text_2=text_2, unet=unet, vae=vae)


def _tokenizer(folder: Path, pad: str):
    from transformers import CLIPTokenizer

    n_vocab = write_clip_tokenizer_files(folder)
    tok = CLIPTokenizer.from_pretrained(folder, bos_token=SPECIAL_BOS, eos_token=SPECIAL_EOS,
                                        unk_token=SPECIAL_EOS, pad_token=pad,
                                        model_max_length=77)
    if len(tok) != n_vocab:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, vocab.json {n_vocab}")
    return tok


def _text_config(shape: dict, tok):
    from transformers import CLIPTextConfig

    shape = {"vocab_size": len(tok), **shape}  # sdxl: CLIP's own 49408
    return CLIPTextConfig(**shape, max_position_embeddings=77,
                          layer_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def build(dest: Path, config: str = "tiny", dtype: str | None = None, seed: int = 0) -> None:
    """Write a StableDiffusionXLPipeline folder into `dest` (deterministic for a given seed);
    weights in `dtype` (default float32 for tiny, float16 for sdxl)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    shapes = _shapes(config)
    dtype = dtype or ("float32" if config == "tiny" else "float16")
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(dest / "tokenizer", SPECIAL_EOS)
    tokenizer_2 = _tokenizer(dest / "tokenizer_2", "!")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(shapes["text"], tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(shapes["text_2"], tokenizer_2))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **shapes["vae"])
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    if dtype != "float32":
        pipe.to(getattr(torch, dtype))
    pipe.save_pretrained(dest, safe_serialization=True)
