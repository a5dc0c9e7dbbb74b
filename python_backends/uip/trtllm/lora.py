"""LoRA for the `tensorrt_llm` runtime: a request's `lora_name` -> the executor's
`LoraConfig(task_id, weights, config)` (TensorRT-LLM's documented LoRA tensors).

Adapters are the same PEFT folders as the torch runtime's (spec parameters `lora_dir`,
`lora_max_rank`; `uip.llm.lora.AdapterDir`). Each name gets a task id; its weights go with the
first request only (the executor caches them by task id), later requests send the task id
alone. When the executor evicted them ("LoRA task ... not found in cache") the runtime sends
the request again with the weights (`TrtllmEngine`).

Tensors (TensorRT-LLM, `lora_weights` / `lora_config`): one row per (module, layer):
weights [rows, max(r * (in + out))] = A [r, in] flattened then B [out, r] flattened (PEFT's
scale folded into B), zero padded; config [rows, 3] = (module id, layer, r).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from uip.llm.lora import Adapter, AdapterDir

# PEFT projection -> TensorRT-LLM LoRA module id (attn_q, attn_k, attn_v, attn_dense,
# mlp_h_to_4h = gate, mlp_4h_to_h = down, mlp_gate = up, as TensorRT-LLM maps Llama's)
MODULE_IDS = {"q_proj": 1, "k_proj": 2, "v_proj": 3, "o_proj": 4,
              "gate_proj": 5, "down_proj": 6, "up_proj": 7}
NOT_IN_CACHE = "not found in cache"


def lora_tensors(adapter: Adapter, dtype: str = "float16"):
    """(weights, config) torch tensors of one adapter in TensorRT-LLM's layout."""
    import torch

    rows = sorted(adapter.weights.items(), key=lambda kv: (kv[0][0], MODULE_IDS[kv[0][1]]))
    flat = [torch.cat([a.reshape(-1), b.reshape(-1)]) for _, (a, b) in rows]
    width = max(t.numel() for t in flat)
    weights = torch.zeros(len(flat), width, dtype=getattr(torch, dtype))
    for i, t in enumerate(flat):
        weights[i, :t.numel()] = t
    config = torch.tensor([[MODULE_IDS[proj], layer, a.shape[0]]
                           for (layer, proj), (a, _) in rows], dtype=torch.int32)
    return weights, config


class TrtllmLora:
    """Task ids per adapter name, and which adapters' weights the executor has been sent."""

    def __init__(self, directory: Path, max_rank: int, dtype: str = "float16") -> None:
        self.adapters = AdapterDir(directory, max_rank)
        self.dtype = dtype
        self._lock = threading.Lock()
        self._task_ids: dict[str, int] = {}
        self._sent: set[str] = set()

    def config(self, name: str, trtllm: Any, resend: bool = False):
        """The request's `trtllm.LoraConfig`: the weights the first time (or `resend`), else
        the task id alone. An unknown adapter is InvalidInput naming it."""
        with self._lock:
            known = name in self._sent and not resend
            task_id = self._task_ids.setdefault(name, len(self._task_ids) + 1)
        if known:
            return trtllm.LoraConfig(task_id=task_id)
        weights, config = lora_tensors(self.adapters.read(name), self.dtype)
        with self._lock:
            self._sent.add(name)
        return trtllm.LoraConfig(task_id=task_id, weights=weights, config=config)

    def status(self) -> dict:
        with self._lock:
            sent = sorted(self._sent)
        return {"enabled": True, "directory": str(self.adapters.directory),
                "max_rank": self.adapters.max_rank, "available": self.adapters.available(),
                "loaded": [{"name": n, "task_id": self._task_ids[n]} for n in sent]}

    def forget(self, name: str) -> bool:
        """The next request of `name` sends its weights again (`uip lora load|unload`)."""
        with self._lock:
            if name not in self._sent:
                return False
            self._sent.discard(name)
            return True
