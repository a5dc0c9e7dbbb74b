"""GPU machine: an all-MiniLM-L6-v2-shaped artifact with random weights and a GPU spec.

The real weights (90 MB) exceed what travels to the GPU machine; timing does not depend on the
weight values, so the benchmark there uses the same config and tokenizer with seeded random
weights, served from a spec that differs from specs/embedding.yaml only in instance kind and
artifact checksum.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, BertModel

src, art, specs = (Path(p) for p in sys.argv[1:4])
dest = art / "embedding"
dest.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = BertModel(AutoConfig.from_pretrained(src))
model.save_pretrained(dest)
for f in src.iterdir():
    if f.name != "config.json" and f.is_file():
        (dest / f.name).write_bytes(f.read_bytes())
spec = yaml.safe_load(Path("specs/embedding.yaml").read_text())
m = spec["models"][0]
m["instances"] = [{"kind": "gpu", "count": 1}]
m["artifact"].pop("sha256")
specs.mkdir(parents=True, exist_ok=True)
(specs / "embedding.yaml").write_text(yaml.safe_dump(spec))
print("prepared", dest, specs)
