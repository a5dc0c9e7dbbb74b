"""Model runner for Llama-family Hugging Face checkpoints (Llama 2/3, Mistral, Qwen2).

Reads the checkpoint's own config.json (through transformers' AutoConfig, which also normalizes
old `rope_scaling` fields into `rope_parameters`) and its safetensors weights; no transformers
model object is built. RMSNorm, RoPE (default, 'linear', 'llama3'; inv_freq from transformers'
ROPE_INIT_FUNCTIONS), grouped-query attention, SiLU MLP, optional q/k/v/o biases (Qwen2),
tied embeddings. One `forward` runs a whole engine step: the flat batch of decode tokens and
prefill chunks, writing K/V into the paged cache (see paged_attention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from uip.llm.paged_attention import StepMeta, attend, backends, write_kv

if TYPE_CHECKING:
    from uip.llm.lora import LoraCache, LoraStep

_ROPE_TYPES = ("default", "linear", "llama3")
MODEL_TYPES = ("llama", "mistral", "qwen2")  # same block: RMSNorm, RoPE, GQA, SiLU MLP


@dataclass
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    max_positions: int
    tie_embeddings: bool
    sliding_window: int | None
    intermediate: int = 0  # MLP width


def read_config(model_dir: Path | str):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    return getattr(config, "get_text_config", lambda: config)()


def shape_of(config) -> LlamaShape:
    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"model type {config.model_type!r} is not one of {MODEL_TYPES}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (silu only)")
    heads = int(config.num_attention_heads)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    return LlamaShape(
        hidden=int(config.hidden_size), layers=int(config.num_hidden_layers), heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        vocab=int(config.vocab_size), eps=float(config.rms_norm_eps),
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 2048),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        sliding_window=int(window) if window else None,
        intermediate=int(getattr(config, "intermediate_size", 0) or 0))


def rope_inv_freq(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """inv_freq [head_dim/2] and the cos/sin scale, as the config's rope parameters say."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported (supported: {_ROPE_TYPES})")
    if rope_type == "default":
        base = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [T, heads, D] with cos/sin [T, 1, D] (half-split layout of HF checkpoints)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_qkv(qkv: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor,
             positions: torch.Tensor, heads: int, kv_heads: int, head_dim: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused [q; k; v] rows [T, ...] -> q [T, heads, D], k, v [T, kv_heads, D], RoPE applied."""
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    cos, sin = cos_table[positions][:, None, :], sin_table[positions][:, None, :]
    q = rotate(qkv[:, :q_dim].view(-1, heads, head_dim), cos, sin)
    k = rotate(qkv[:, q_dim:q_dim + kv_dim].view(-1, kv_heads, head_dim), cos, sin)
    v = qkv[:, q_dim + kv_dim:].reshape(-1, kv_heads, head_dim)
    return q, k, v


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next norm: (h + delta, rms_norm(h + delta))."""
    h = h + delta
    return h, rms_norm(h, weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _Ops:
    """The elementwise pieces of a layer: plain functions, or (GPU, `compile_elementwise`)
    each compiled by torch.compile into fused kernels (a few launches per layer instead of
    ~30; the GEMMs and attention stay as they are)."""

    def __init__(self, compiled: bool) -> None:
        wrap = (lambda f: torch.compile(f, dynamic=True, fullgraph=True)) if compiled \
            else (lambda f: f)
        self.rms_norm, self.rope_qkv = wrap(rms_norm), wrap(rope_qkv)
        self.add_rms_norm, self.silu_mul = wrap(add_rms_norm), wrap(silu_mul)


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        weights.update(load_file(str(model_dir / name)))
    return weights


@dataclass
class _Layer:
    ln_in: torch.Tensor
    qkv: torch.Tensor  # fused [q; k; v] rows
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    ln_post: torch.Tensor
    gate_up: torch.Tensor  # fused [gate; up] rows
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def resolve_dtype(name: str, config) -> torch.dtype:
    if name == "auto":
        d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
        name = str(d).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return dtype


class LlamaRunner:
    """Weights on `device`; `forward` computes the logits of selected rows of one step."""

    def __init__(self, model_dir: Path | str, dtype: str = "auto", device: str = "cpu",
                 max_context: int | None = None, compile_elementwise: bool = False) -> None:
        model_dir = Path(model_dir)
        self.config = config = read_config(model_dir)
        self.shape = s = shape_of(config)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, config)
        self.ops = _Ops(compile_elementwise and self.device.type == "cuda")
        self.max_context = int(max_context or s.max_positions)
        if self.max_context > s.max_positions:
            raise ValueError(f"max_context {self.max_context} is beyond the model's "
                             f"max_position_embeddings {s.max_positions}")
        if s.sliding_window is not None and s.sliding_window < self.max_context:
            raise ValueError(f"sliding-window attention ({s.sliding_window}) is not supported: "
                             f"set max_context <= {s.sliding_window}")
        self._load(load_weights(model_dir))
        inv_freq, scale = rope_inv_freq(config, s.head_dim)
        freqs = torch.arange(self.max_context, dtype=torch.float)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * scale).to(self.dtype).to(self.device)
        self.sin = (emb.sin() * scale).to(self.dtype).to(self.device)
        self.lora: LoraCache | None = None  # set by the engine when adapters are configured

    def _load(self, w: dict[str, torch.Tensor]) -> None:
        def get(name: str) -> torch.Tensor | None:
            t = w.pop(name, None)
            return None if t is None else t.to(self.dtype).to(self.device)

        def cat(*names: str) -> torch.Tensor | None:
            parts = [get(n) for n in names]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"checkpoint has only some of {names}")
            return torch.cat(parts, dim=0)

        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight")
        lm_head = get("lm_head.weight")
        self.lm_head = self.embed if lm_head is None or self.shape.tie_embeddings else lm_head
        self.layers: list[_Layer] = []
        for i in range(self.shape.layers):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            self.layers.append(_Layer(
                ln_in=get(f"model.layers.{i}.input_layernorm.weight"),
                qkv=cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                qkv_bias=cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"),
                o=get(a + "o_proj.weight"), o_bias=get(a + "o_proj.bias"),
                ln_post=get(f"model.layers.{i}.post_attention_layernorm.weight"),
                gate_up=cat(m + "gate_proj.weight", m + "up_proj.weight"),
                gate_up_bias=cat(m + "gate_proj.bias", m + "up_proj.bias"),
                down=get(m + "down_proj.weight"), down_bias=get(m + "down_proj.bias")))
        missing = [n for n, t in (("embed", self.embed), ("norm", self.norm)) if t is None]
        missing += [f"layer {i}" for i, ly in enumerate(self.layers)
                    if ly.qkv is None or ly.o is None or ly.gate_up is None or ly.down is None]
        if missing:
            raise ValueError(f"checkpoint misses weights: {missing}")
        rest = [n for n in w if "rotary_emb" not in n]
        if rest:
            raise ValueError(f"unexpected weights in the checkpoint: {rest[:5]}")

    def allocate_cache(self, num_blocks: int, block_size: int
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = self.shape
        dims = (num_blocks, block_size, s.kv_heads, s.head_dim)
        return [(torch.zeros(dims, dtype=self.dtype, device=self.device),
                 torch.zeros(dims, dtype=self.dtype, device=self.device))
                for _ in range(s.layers)]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: StepMeta,
                cache: list[tuple[torch.Tensor, torch.Tensor]], logit_rows: torch.Tensor,
                lora: LoraStep | None = None) -> torch.Tensor:
        """One step: [T] tokens at [T] positions -> float32 logits [len(logit_rows), vocab];
        `lora` (rows' adapter slots in `self.lora`) adds each row's adapter."""
        with backends(self.device):
            h = self._layers(self.embed[input_ids], positions, meta, cache, lora)
        h = self.ops.rms_norm(h[logit_rows], self.norm, self.shape.eps)
        return F.linear(h, self.lm_head).float()

    def _layers(self, h: torch.Tensor, positions: torch.Tensor, meta: StepMeta,
                cache: list[tuple[torch.Tensor, torch.Tensor]], lora: LoraStep | None = None
                ) -> torch.Tensor:
        s, ops = self.shape, self.ops
        adapters = self.lora if lora is not None else None

        def linear(i: int, fused: str, x: torch.Tensor, w: torch.Tensor,
                   b: torch.Tensor | None) -> torch.Tensor:
            if adapters is None:
                return F.linear(x, w, b)
            return adapters.linear(i, fused, x, w, b, lora)

        x = ops.rms_norm(h, self.layers[0].ln_in, s.eps)
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, cache, strict=True)):
            qkv = linear(i, "qkv", x, layer.qkv, layer.qkv_bias)
            if meta.rope_kv_kernel is not None:  # decode only: k, v go straight to the cache
                q = meta.rope_kv_kernel(qkv, self.cos, self.sin, positions, meta.slot_mapping,
                                        k_cache, v_cache)
                k = v = None
            else:
                q, k, v = ops.rope_qkv(qkv, self.cos, self.sin, positions, s.heads,
                                       s.kv_heads, s.head_dim)
                write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
            o = attend(q, k, v, k_cache, v_cache, meta)
            h, x = ops.add_rms_norm(h, linear(i, "o", o.reshape(-1, s.heads * s.head_dim),
                                              layer.o, layer.o_bias), layer.ln_post, s.eps)
            down = linear(i, "down",
                          ops.silu_mul(linear(i, "gate_up", x, layer.gate_up, layer.gate_up_bias)),
                          layer.down, layer.down_bias)
            if i + 1 < len(self.layers):  # the residual add fused with the next layer's norm
                h, x = ops.add_rms_norm(h, down, self.layers[i + 1].ln_in, s.eps)
            else:
                h = h + down
        return h


def eos_ids(model_dir: Path | str, config) -> frozenset[int]:
    """The model's end-of-sequence ids: generation_config.json first, else config.json."""
    path = Path(model_dir) / "generation_config.json"
    eos = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return frozenset(int(i) for i in ids if i is not None)
