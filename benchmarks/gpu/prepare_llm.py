"""GPU machine: a Llama-3-8B-shaped bf16 model with seeded random weights, and its specs.

    python benchmarks/gpu/prepare_llm.py ART_DIR SPECS_DIR [--shape llama3-8b|tiny]

Writes ART_DIR/llm-8b (the llm-tiny tokenizer or --tokenizer's + the 8B-shaped model) and
SPECS_DIR/{llm,llm_bls}.yaml: specs/llm*.yaml with llm_engine on a GPU instance, the artifact
switched, the checksums dropped and the KV cache sized for the model. Prints the HBM floor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from uip.artifacts.llm_tiny import build_tokenizer

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                 max_position_embeddings=2048),
}
H100_HBM_BYTES_PER_S = 3.35e12


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("art", type=Path)
    p.add_argument("specs", type=Path)
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--num-blocks", type=int, default=2048)
    p.add_argument("--max-batch-tokens", type=int, default=256,
                   help="llm_engine's tokens per step: the 64 decodes + a 128-token prompt "
                        "(prompts join the decodes instead of one prefill stalling them)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="a tokenizer folder (benchmarks/gpu/build_tokenizer.py: 128k ids, so "
                        "every id decodes to text) instead of llm-tiny's")
    p.add_argument("--max-requests", type=int, default=64, help="llm_engine's running sequences")
    p.add_argument("--bls-instances", type=int, default=1,
                   help="llm_bls stub processes (each with its own driver thread and GIL)")
    p.add_argument("--colocated", action="store_true",
                   help="llm_bls holds the engine (engine_transport: local, llm_engine's "
                        "parameters on llm_bls, on the GPU); only llm_bls's spec is written")
    p.add_argument("--specs-only", action="store_true",
                   help="write the specs only (the model in ART_DIR/llm-8b is there already)")
    a = p.parse_args()
    if not a.specs_only:
        write_model(a)
    write_specs(a)


def write_model(a: argparse.Namespace) -> None:
    dest = a.art / "llm-8b"
    dest.mkdir(parents=True, exist_ok=True)
    if a.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(a.tokenizer))
    else:
        tok = build_tokenizer()
    tok.save_pretrained(dest)
    config = LlamaConfig(**SHAPES[a.shape], tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(a.device):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    model.save_pretrained(dest)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    floor_ms = weight_bytes / H100_HBM_BYTES_PER_S * 1000
    (a.art / "llm-8b.json").write_text(json.dumps(
        {"weight_bytes": weight_bytes, "hbm_floor_ms_per_token_h100": floor_ms}))
    print(f"weights {weight_bytes / 1e9:.2f} GB; H100 HBM floor {floor_ms:.2f} ms/token "
          f"({1000 / floor_ms:.0f} tok/s at batch 1)")


def write_specs(a: argparse.Namespace) -> None:
    a.specs.mkdir(parents=True, exist_ok=True)
    engine: dict = {}
    for name in ("llm", "llm_bls"):
        spec = yaml.safe_load(Path(f"specs/{name}.yaml").read_text())
        for m in spec["models"]:
            if m.get("artifact"):
                m["artifact"] = {"path": "llm-8b"}
            if m["name"] == "llm_engine":
                m["instances"] = [{"kind": "gpu", "count": 1}]
                m["parameters"].update(num_blocks=a.num_blocks,
                                       max_batch_tokens=a.max_batch_tokens, dtype="bfloat16",
                                       max_requests_per_batch=a.max_requests)
                m["limits"]["max_context"] = 8192
                engine = m
            if m["name"] == "llm_bls":
                m["instances"] = [{"kind": "cpu", "count": a.bls_instances}]
                if a.colocated:
                    m["instances"] = [{"kind": "gpu", "count": 1}]
                    m["runtime"] = engine["runtime"]
                    m["parameters"].update(engine["parameters"], engine_transport="local")
                    m["limits"].update(max_context=8192,
                                       max_inflight=engine["limits"]["max_inflight"])
        if not (a.colocated and name == "llm"):
            (a.specs / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


if __name__ == "__main__":
    main()
