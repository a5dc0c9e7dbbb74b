"""A tiny Stable Diffusion pipeline folder, built offline and deterministically.

The folder is a plain diffusers `StableDiffusionPipeline` layout (model_index.json, tokenizer/,
text_encoder/, unet/, vae/, scheduler/), so `StableDiffusionPipeline.from_pretrained(folder)`
loads it, and any real SD 1.x/2.x folder can take its place in the spec.

The CLIP tokenizer's vocab.json/merges.txt are made here: byte-level BPE merges learnt from a
small built-in word list (deterministic: ties broken by the pair itself). The weights come from
fixed seeds. Two shapes:
- `tiny` (default artifact `sd-tiny`): CLIP hidden 32 / 2 layers, UNet (32, 64), VAE
  (32, 32, 64, 64) with SD's scale factor 8: 64x64 images from 8x8 latents, a few ms per UNet
  call on CPU, so per-call overhead (what batching saves) is visible.
- `sd15` : SD 1.5-shaped UNet (860M), VAE and CLIP ViT-L text encoder with random weights
  (fp16 by default), for GPU benchmarks only (about 2 GB; never built by the tests).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

SPECIAL_BOS = "<|startoftext|>"
SPECIAL_EOS = "<|endoftext|>"

# The text the merges are learnt from: words people put in image prompts.
WORDS = """
a an the of in on at with and or by for to from under over near above behind inside
photo photograph picture painting drawing sketch illustration render portrait landscape
cat cats dog dogs horse horses astronaut robot castle mountain mountains river lake sea ocean
forest tree trees flower flowers city street house garden sky cloud clouds sun moon star stars
night day morning evening sunset sunrise winter summer spring autumn snow rain fog light
red green blue yellow orange purple pink black white gray golden silver bright dark colorful
beautiful detailed highly realistic photorealistic cinematic dramatic lighting soft sharp
focus bokeh lens camera canon nikon wide angle close up macro shot studio high quality
masterpiece trending artstation digital art oil watercolor pencil style by artist
riding sitting standing running flying walking sleeping playing holding wearing looking
small big large tiny huge old young ancient modern futuristic fantasy magic space planet
blurry ugly deformed low resolution bad anatomy extra fingers watermark text signature
man woman child girl boy people person face eyes hair smile hat dress coat glasses
water fire ice stone wood metal glass gold crystal neon cyberpunk steampunk medieval
""".split()


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode character map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE over words (CLIP style: the last symbol of a word carries '</w>')."""
    b2u = bytes_to_unicode()
    corpus: Counter[tuple[str, ...]] = Counter()
    for w in words:
        chars = [b2u[b] for b in w.lower().encode("utf-8")]
        corpus[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in corpus.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, freq in corpus.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        corpus = merged
    return merges


def write_clip_tokenizer_files(folder: Path, num_merges: int = 400) -> int:
    """vocab.json + merges.txt for CLIPTokenizer; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = learn_merges(WORDS, num_merges)
    seen = set(vocab_list)
    for a, b in merges:
        tok = a + b
        if tok not in seen:
            vocab_list.append(tok)
            seen.add(tok)
    vocab_list += [SPECIAL_BOS, SPECIAL_EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return len(vocab)


SCHEDULER_CONFIG = dict(  # Stable Diffusion 1.5's scheduler (PNDM) settings
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)


def _shapes(config: str) -> dict:
    if config == "tiny":
        return dict(
            text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, projection_dim=32, vocab_size=None),
            unet=dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      cross_attention_dim=32, attention_head_dim=8),
            vae=dict(block_out_channels=(32, 32, 64, 64), sample_size=64,
                     down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4),
        )
    if config == "sd15":
        return dict(
            text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, projection_dim=768, vocab_size=49408),
            unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                      sample_size=64,
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                      cross_attention_dim=768, attention_head_dim=8),
            vae=dict(block_out_channels=(128, 256, 512, 512), sample_size=512,
                     down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4),
        )
    raise ValueError(f"unknown SD shape config {config!r}; use 'tiny' or 'sd15'")


def build(dest: Path, config: str = "tiny", dtype: str | None = None, seed: int = 0) -> None:
    """Write a StableDiffusionPipeline folder into `dest` (deterministic for a given seed)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    shapes = _shapes(config)
    dtype = dtype or ("float32" if config == "tiny" else "float16")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    dest.mkdir(parents=True, exist_ok=True)

    tok_dir = dest / "tokenizer"
    n_vocab = write_clip_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(
        tok_dir, bos_token=SPECIAL_BOS, eos_token=SPECIAL_EOS, unk_token=SPECIAL_EOS,
        pad_token=SPECIAL_EOS, model_max_length=77,
    )
    if len(tokenizer) != n_vocab:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, vocab.json {n_vocab}")
    text = dict(shapes["text"])
    text["vocab_size"] = text["vocab_size"] or n_vocab
    if text["vocab_size"] < len(tokenizer):
        raise ValueError("text encoder vocabulary smaller than the tokenizer's")

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **text, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **shapes["vae"])
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch_dtype)
    pipe.save_pretrained(dest, safe_serialization=True)
