"""What a Hugging Face checkpoint is, as far as building a TensorRT-LLM engine needs (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Hugging Face architecture -> folder of its convert_checkpoint.py under
# TensorRT-LLM's examples/models/core/ (1.2.x layout), for the families whose scripts share
# the --model_dir/--output_dir/--dtype/--tp_size/--pp_size arguments.
FAMILIES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
    "QWenLMHeadModel": "qwen",
    "GPT2LMHeadModel": "gpt",
    "PhiForCausalLM": "phi",
    "Phi3ForCausalLM": "phi",
}

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be converted; the message says what is missing."""


def _first(cfg: dict, *keys: str):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def _eos(value) -> tuple[int, ...]:
    """eos_token_id of a config: an int, a list of ints, or absent."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(int(v) for v in values if isinstance(v, int))


@dataclass(frozen=True)
class HfCheckpoint:
    path: Path
    architecture: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    torch_dtype: str | None = None
    has_tokenizer: bool = True
    eos_token_ids: tuple[int, ...] = ()

    @property
    def family(self) -> str | None:
        return FAMILIES.get(self.architecture)

    @classmethod
    def from_config(cls, path: Path, cfg: dict, has_tokenizer: bool = True,
                    generation: dict | None = None) -> HfCheckpoint:
        archs = cfg.get("architectures") or []
        heads = _first(cfg, "num_attention_heads", "n_head")
        layers = _first(cfg, "num_hidden_layers", "n_layer")
        if not archs or heads is None or layers is None:
            raise CheckpointError(
                f"{path}/config.json lacks architectures, num_attention_heads or "
                "num_hidden_layers: it is not a Hugging Face causal-LM checkpoint."
            )
        return cls(
            path=path,
            architecture=archs[0],
            num_attention_heads=int(heads),
            num_key_value_heads=int(_first(cfg, "num_key_value_heads", "n_head_kv") or heads),
            num_hidden_layers=int(layers),
            vocab_size=_first(cfg, "vocab_size"),
            max_position_embeddings=_first(cfg, "max_position_embeddings", "n_positions"),
            torch_dtype=_first(cfg, "torch_dtype", "dtype"),
            has_tokenizer=has_tokenizer,
            eos_token_ids=_eos((generation or {}).get("eos_token_id", cfg.get("eos_token_id"))),
        )

    @classmethod
    def read(cls, path: Path) -> HfCheckpoint:
        """Read and check a checkpoint folder: config.json and weights must be there."""
        if not path.is_dir():
            raise CheckpointError(
                f"Hugging Face checkpoint {path} does not exist: pass the folder that holds "
                "config.json and the weights (e.g. from `hf download ORG/MODEL --local-dir DIR`)."
            )
        config = path / "config.json"
        if not config.is_file():
            raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint.")
        try:
            cfg = json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config} is not valid JSON: {e}") from None
        if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
            raise CheckpointError(
                f"{path} has no weights (*.safetensors or pytorch_model*.bin): the download may "
                "be incomplete, or only the config was fetched."
            )
        has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
        gen_file = path / "generation_config.json"
        try:
            generation = json.loads(gen_file.read_text()) if gen_file.is_file() else None
        except json.JSONDecodeError:
            generation = None
        return cls.from_config(path, cfg, has_tokenizer=has_tok, generation=generation)
