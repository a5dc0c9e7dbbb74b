"""Plain transformers `generate` at batch 1 on the GPU: decode tokens/s vs the HBM floor."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

folder = Path(sys.argv[1])
new = int(sys.argv[2]) if len(sys.argv) > 2 else 128
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
ids = torch.randint(10, 4000, (1, 32), generator=torch.Generator().manual_seed(0)).cuda()
kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
torch.cuda.synchronize()
t = time.perf_counter()
model.generate(ids, **kw)
torch.cuda.synchronize()
total = time.perf_counter() - t
t = time.perf_counter()
model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
torch.cuda.synchronize()
prefill = time.perf_counter() - t
ms = (total - prefill) / (new - 1) * 1000
info = json.loads((folder.parent / "llm-8b.json").read_text())
out = {"generate_decode_ms_per_token": ms, "generate_tok_per_s": 1000 / ms,
       "hbm_floor_ms_per_token_h100": info["hbm_floor_ms_per_token_h100"],
       "fraction_of_floor": info["hbm_floor_ms_per_token_h100"] / ms}
print(json.dumps(out))
