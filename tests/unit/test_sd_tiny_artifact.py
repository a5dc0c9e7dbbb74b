"""The offline, deterministic tiny SD artifact (a diffusers StableDiffusionPipeline folder)."""

from __future__ import annotations

import filecmp

import pytest

from uip import artifacts
from uip.artifacts import sd_tiny
from uip.core.paths import artifacts_root


def test_hand_made_bpe_is_deterministic_and_tokenizes(tmp_path):
    from transformers import CLIPTokenizer

    n = sd_tiny.write_clip_tokenizer_files(tmp_path / "a")
    sd_tiny.write_clip_tokenizer_files(tmp_path / "b")
    for f in ("vocab.json", "merges.txt"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False)
    tok = CLIPTokenizer.from_pretrained(tmp_path / "a", model_max_length=77)
    assert len(tok) == n
    ids = tok("A photo of a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    tokens = tok.convert_ids_to_tokens(ids[1:-1])
    assert "".join(tokens) == "a</w>photo</w>of</w>a</w>cat</w>"
    assert "photo</w>" in tokens  # merges were learnt
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a cat"
    padded = tok("x " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77


def test_build_is_deterministic_and_loads(tmp_path):
    from diffusers import StableDiffusionPipeline

    artifacts.ensure(["sd-tiny"])
    sd_tiny.build(tmp_path / "again")
    cmp = filecmp.dircmp(artifacts_root() / "sd-tiny", tmp_path / "again")

    def differing(c) -> list[str]:
        out = c.diff_files + c.left_only + c.right_only
        for sub in c.subdirs.values():
            out += differing(sub)
        return out

    assert differing(cmp) == []
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "again")
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 8
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


def test_shape_configs():
    assert sd_tiny._shapes("sd15")["unet"]["block_out_channels"] == (320, 640, 1280, 1280)
    with pytest.raises(ValueError, match="unknown SD shape config"):
        sd_tiny._shapes("sdxl")
