"""Two tiny PEFT LoRA adapters for `llm-tiny`, built offline (the `peft` library, dev deps).

`alpha`: rank 4 on q/k/v/o_proj; `beta`: rank 8 on every attention and MLP projection, with
rsLoRA scaling. Weights come from numpy's frozen legacy generator (fixed seeds); B is not zero
(a freshly initialised LoRA's is), so each adapter changes the model's output. Each folder is
what `PeftModel.save_pretrained` writes: adapter_config.json + adapter_model.safetensors.
"""

from __future__ import annotations

from pathlib import Path

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
# name -> (rank, alpha, targets, rslora, seed)
ADAPTERS = {
    "alpha": (4, 8, ATTENTION, False, 1),
    "beta": (8, 16, ATTENTION + MLP, True, 2),
}
STD = 0.08  # of A and B: large enough that greedy tokens change


def build(dest: Path, base: Path, adapters: dict | None = None) -> list[Path]:
    """Write `adapters` (name -> (rank, alpha, targets, rslora, seed); default ADAPTERS) of
    the llm-tiny checkpoint `base` under `dest`."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for name, (rank, alpha, targets, rslora, seed) in (adapters or ADAPTERS).items():
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                            bias="none", use_rslora=rslora, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        rng = np.random.RandomState(seed)
        with torch.no_grad():
            for pname, p in sorted(peft_model.named_parameters()):
                if ".lora_A." in pname or ".lora_B." in pname:
                    p.copy_(torch.from_numpy(rng.normal(0.0, STD, p.shape).astype(np.float32)))
        folder = Path(dest) / name
        peft_model.save_pretrained(str(folder))
        out.append(folder)
    return out


def build_bench(dest: Path, base: Path, count: int = 8, rank: int = 8) -> list[str]:
    """`count` distinct rank-`rank` adapters on every projection (bench-0, bench-1, ...), for
    the mixed-adapter benchmark."""
    adapters = {f"bench-{i}": (rank, 2 * rank, ATTENTION + MLP, False, 100 + i)
                for i in range(count)}
    build(dest, base, adapters)
    return list(adapters)
