"""FLOPs of one SD UNet call by op and by block (meta tensors: runs anywhere, in seconds).

    python benchmarks/gpu/unet_flops.py [--config sd15] [--rows 16] [--size 64]

With a kernel profile's times per category (`sd_variants.py --profile`) this gives each
category's achieved TFLOP/s: convolutions are `aten.convolution`, GEMMs `addmm` + `mm`, and
attention `bmm` (SDPA runs as its math form on meta tensors: the same FLOPs).
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from uip.artifacts.sd_tiny import _shapes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="sd15")
    p.add_argument("--rows", type=int, default=16, help="UNet rows (2 per image with CFG)")
    p.add_argument("--size", type=int, default=64, help="latent side (512 px / 8)")
    a = p.parse_args()
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4,
                                    **_shapes(a.config)["unet"]).half()
        dim = unet.config.cross_attention_dim
        with FlopCounterMode(display=False) as fc:
            unet(torch.randn(a.rows, 4, a.size, a.size, dtype=torch.half),
                 torch.full((a.rows,), 500.0),
                 encoder_hidden_states=torch.randn(a.rows, 77, dim, dtype=torch.half))
    counts = fc.get_flop_counts()
    print(f"| op | TFLOP ({a.config}, {a.rows} rows, {a.size}x{a.size} latents) |\n|---|---:|")
    for op, n in sorted(counts["Global"].items(), key=lambda kv: -kv[1]):
        print(f"| `{op}` | {n / 1e12:.3f} |")
    print(f"| total | {sum(counts['Global'].values()) / 1e12:.3f} |\n\n| block | TFLOP by op |\n"
          "|---|---|")
    for name in sorted(counts):
        parts = name.split(".")  # UNet2DConditionModel.up_blocks.3, ...mid_block
        if parts[1:2] == ["mid_block"] and len(parts) == 2 or (
                parts[1:2] in (["down_blocks"], ["up_blocks"]) and len(parts) == 3):
            ops = ", ".join(f"{str(k).split('.')[-1]} {v / 1e12:.3f}"
                            for k, v in counts[name].items() if v)
            print(f"| {'.'.join(parts[1:])} | {ops} |")

if __name__ == "__main__":
    main()
