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


def build_bench(dest: Path, base: Path, count: int = 8, rank: int = 8,
                device: str = "cpu") -> list[str]:
    """`count` distinct rank-`rank` adapters on every projection (bench-0, bench-1, ...) of
    the Llama-family checkpoint `base` (any size: only its config.json is read), for the
    mixed-adapter benchmark. PEFT wraps the model built on the meta device (no base weights
    in memory); only the LoRA weights are made, seeded, on `device`, and saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base)))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ATTENTION + MLP,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    lora = [(name, peft_model.get_submodule(name.removesuffix(".weight")))
            for name, _ in sorted(peft_model.named_parameters())
            if ".lora_A." in name or ".lora_B." in name]
    names = []
    for i in range(count):
        gen = torch.Generator(device).manual_seed(100 + i)
        for name, module in lora:
            out_f, in_f = module.weight.shape
            std = in_f ** -0.5 if ".lora_A." in name else STD / rank ** 0.5
            module.weight = torch.nn.Parameter(
                torch.randn(out_f, in_f, generator=gen, device=device) * std,
                requires_grad=False)
        names.append(f"bench-{i}")
        peft_model.save_pretrained(str(Path(dest) / names[-1]))
    return names
