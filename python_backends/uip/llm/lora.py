"""LoRA adapters for the paged engine, applied per row without merging (S-LoRA / Punica style).

Adapters are PEFT folders (`adapter_config.json` + `adapter_model.safetensors`) under the
deployment's adapter directory (spec parameter `lora_dir`), one folder per adapter name, LoRA
on any of q/k/v/o_proj and gate/up/down_proj, rank <= `lora_max_rank`. A folder added while
the server runs is read on its first request.

The device holds `lora_max_adapters` slots (slot 0 is the base model and has no buffer) in
fixed buffers per layer and fused linear: A [slots, W, in] (W = parts * max_rank: the parts'
A side by side, zero padded) and B [slots, W, out] (block diagonal, PEFT's scale folded in),
so a fused [q; k; v] or [gate; up] projection gets its delta from one pair of matmuls:
y += (x @ A[slot]^T) @ B[slot]. The A rows are appended to the runner's fused base weight
([out + slots * W, in]; the runner keeps the first `out` rows, a view, for base steps), so one
GEMM gives [y | xa] with every slot's shrink for a few percent more weight bytes. A step's
rows carry their slot index, so one batch mixes adapters and the base model, in one of two
forms (`LoraStep`):
- dense (GPU steps of up to DENSE_MAX_ROWS rows, and the decode CUDA graphs): the folded GEMM,
  then every row's expand from the columns of its own slot: y[t] += xa[t, slot] @ B[slot], one
  Triton kernel per linear (`triton_lora.lora_expand`; the "torch" form does it as a one-hot
  mask multiply and an addmm, and the "unfused" form, kept to compare, with the shrink as a
  GEMM of its own). Fixed shapes, no host data (CUDA graphs).
- grouped (CPU, and GPU steps above DENSE_MAX_ROWS): the rows of each adapter present are
  gathered and padded to the largest group, one batched matmul pair over the adapters present
  (Punica's SGMV, done with bmm), added back with index_add_; base rows are skipped. It does
  1/slots of the dense form's multiply-adds, which is what counts on a CPU.
Slots are assigned on admission, ref counted by the running requests, and evicted least
recently used.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from uip.core.inputs import InvalidInput
from uip.llm.lora_names import CONFIG_FILE, WEIGHTS_FILE, available, check_name

if TYPE_CHECKING:
    from uip.llm.llama import LlamaRunner

# our fused linears -> the checkpoint projections they hold, in row order
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
         "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
TARGETS = {p: f for f, parts in FUSED.items() for p in parts}
_KEY_RE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# steps of up to this many rows take the dense form, larger ones the grouped one (per device
# type; docs/benchmarks.md: grouped wins on CPU at every size; on the GPU the fused dense form
# adds one kernel per linear and its masked multiply-adds stay a few % of a prefill step's,
# where grouped adds five kernels and copies; `uip.bench.llm_lora`'s "prefill" times both)
DENSE_MAX_ROWS = {"cuda": 4096, "cpu": 0}
# the dense form's variants: folded shrink + the Triton expand (GPU default), folded shrink +
# torch mask and addmm (default without Triton or a GPU), the shrink as its own GEMM + mask +
# addmm (the form before the fold; the benchmark compares them)
DENSE_FORMS = ("triton", "torch", "unfused")


@dataclass
class Adapter:
    """One adapter read from disk (host memory): per (layer, projection) A [r, in] and
    scale * B [out, r]."""

    name: str
    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    fingerprint: bytes  # changes when the files change (keys the prefix cache)


def _dims(shape) -> dict[str, tuple[int, int]]:
    """projection -> (in, out) of the base model."""
    q, kv, h = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.hidden
    inter = shape.intermediate
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def read_adapter(folder: Path, shape, max_rank: int) -> Adapter:
    """Parse and check a PEFT LoRA folder against the rank cap and (unless None) the base
    model's shape."""
    from safetensors.torch import load_file

    name = folder.name
    config = json.loads((folder / CONFIG_FILE).read_text())
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidInput(f"adapter {name!r} is a {config.get('peft_type')} adapter; only "
                           "LoRA is supported")
    unsupported = [k for k in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern")
                   if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise InvalidInput(f"adapter {name!r} uses {unsupported}, which are not supported")
    rank = int(config["r"])
    if rank > max_rank:
        raise InvalidInput(f"adapter {name!r} has rank {rank}, above this deployment's "
                           f"lora_max_rank of {max_rank}")
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    path = folder / WEIGHTS_FILE
    raw = load_file(str(path))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        m = _KEY_RE.search(key)
        if m is None or m.group(2) not in TARGETS:
            raise InvalidInput(f"adapter {name!r} has weight {key!r}: only LoRA on "
                               f"{sorted(TARGETS)} is supported")
        layer = int(m.group(1))
        if shape is not None and layer >= shape.layers:
            raise InvalidInput(f"adapter {name!r} has layer {layer}; the model has "
                               f"{shape.layers}")
        pairs.setdefault((layer, m.group(2)), {})[m.group(3)] = t
    dims = _dims(shape) if shape is not None else {}
    weights = {}
    for (layer, proj), ab in pairs.items():
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None:
            raise InvalidInput(f"adapter {name!r}: layer {layer} {proj} lacks lora_A or lora_B")
        r = a.shape[0]
        d_in, d_out = dims.get(proj, (a.shape[1], b.shape[0]))
        if a.shape != (r, d_in) or b.shape != (d_out, r) or r > max_rank:
            raise InvalidInput(f"adapter {name!r}: layer {layer} {proj} has A {list(a.shape)}, "
                               f"B {list(b.shape)}; the model needs [r, {d_in}], [{d_out}, r] "
                               f"with r <= {max_rank}")
        weights[(layer, proj)] = (a.float(), b.float() * scale)
    if not weights:
        raise InvalidInput(f"adapter {name!r} holds no LoRA weights")
    st = path.stat()
    fingerprint = f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return Adapter(name, rank, weights, fingerprint)


class AdapterDir:
    """The deployment's adapter directory: one PEFT folder per adapter name, read on demand
    (so a folder added while the server runs is found on its first request)."""

    def __init__(self, directory: Path, max_rank: int, shape=None) -> None:
        if max_rank < 1:
            raise ValueError("lora_max_rank must be >= 1")
        self.directory, self.max_rank, self.shape = Path(directory), max_rank, shape

    def available(self) -> list[str]:
        return available(self.directory)

    def read(self, name: str) -> Adapter:
        """The adapter `name`; InvalidInput naming it when it is unknown or does not fit."""
        folder = self.directory / check_name(name)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise InvalidInput(f"unknown LoRA adapter {name!r}: no {CONFIG_FILE} and "
                               f"{WEIGHTS_FILE} under {self.directory}")
        return read_adapter(folder, self.shape, self.max_rank)


def onehot_of(row_slots: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """[T, slots] from each row's slot (0: the base, all zero); no host sync (graph-safe)."""
    ids = torch.arange(1, slots + 1, device=row_slots.device)
    return (row_slots[:, None] == ids[None, :]).to(dtype)


def slot_mask(onehot: torch.Tensor, width: int) -> torch.Tensor:
    """[T, slots * width]: 1 on the columns of each row's own slot."""
    t, slots = onehot.shape
    return onehot[:, :, None].expand(t, slots, width).reshape(t, slots * width)


def reference_lora_expand(y: torch.Tensor, xa: torch.Tensor, row_slots: torch.Tensor,
                          b: torch.Tensor, rank: int, parts: Sequence[int],
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """What `triton_lora.lora_expand` computes (the dense "torch" form): the mask multiply (in
    place on xa) and an addmm into y. `mask`: `slot_mask` of the rows (else built here)."""
    slots = b.shape[0] // (rank * len(parts))
    if mask is None:
        mask = slot_mask(onehot_of(row_slots, slots, xa.dtype), rank * len(parts))
    return y.addmm_(xa.mul_(mask), b)


@dataclass
class LoraStep:
    """One step's adapter rows, in one of two forms (see `LoraCache.step`):

    - dense: `slots` [T] each row's slot on the device (0: the base), any stride; every row's
      xa from the folded GEMM (`fold`; else a GEMM of its own) and its expand from its own
      slot's columns: `kernel` (the Triton one), else (`onehot` [T, slots], model dtype) the
      torch mask multiply and addmm (`reference_lora_expand`). Fixed shapes and no host data,
      so it can run inside a CUDA graph (`DecodeGraphs`).
    - grouped: the rows of each adapter present, padded to the largest group: `index`
      [G, M] (rows gathered from x), `groups` [G] (their slot - 1; None: all slots in order,
      no copy of the buffers), `rows` [R] (the rows with an adapter) and `pos` [R] (where
      each is in the padded [G * M] output). One batched matmul pair per linear (Punica's
      SGMV, done with bmm), base rows skipped.
    """

    slots: torch.Tensor | None = None
    kernel: Callable[..., torch.Tensor] | None = None  # `triton_lora.lora_expand`
    onehot: torch.Tensor | None = None
    fold: bool = True
    index: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    single: int | None = None  # every row on this one slot - 1: plain matmuls
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def mask(self, width: int) -> torch.Tensor:
        """[T, slots * width]: 1 on the columns of each row's own slot (shared by layers)."""
        m = self._masks.get(width)
        if m is None:
            m = self._masks[width] = slot_mask(self.onehot, width)
        return m


def grouped_step(row_slots: list[int], slots: int, device: torch.device) -> LoraStep:
    """The grouped form of a step (host lists -> a few small device tensors)."""
    members: dict[int, list[int]] = {}
    for i, s in enumerate(row_slots):
        if s:
            members.setdefault(s, []).append(i)
    present = sorted(members)
    if len(present) == 1 and len(members[present[0]]) == len(row_slots):
        return LoraStep(single=present[0] - 1)
    width = max(len(m) for m in members.values())
    index, pos, rows = [], [], []
    for g, s in enumerate(present):
        m = members[s]
        index.append(m + [m[0]] * (width - len(m)))  # padding rows: computed, never added
        rows += m
        pos += range(g * width, g * width + len(m))
    groups = None if present == list(range(1, slots + 1)) else [s - 1 for s in present]

    def dev(v):
        return torch.tensor(v, dtype=torch.long).to(device, non_blocking=True)

    return LoraStep(index=dev(index), groups=None if groups is None else dev(groups),
                    rows=dev(rows), pos=dev(pos))


class LoraCache:
    """The device slots and their buffers; `linear` is what the model runner calls. Made for
    one runner: it appends the A buffers to the runner's fused weights (see the module doc)
    and sets `runner.lora`."""

    def __init__(self, directory: Path, runner: LlamaRunner, max_adapters: int,
                 max_rank: int) -> None:
        if max_adapters < 1:
            raise ValueError("lora_max_adapters must be >= 1")
        shape, device, dtype = runner.shape, runner.device, runner.dtype
        self.adapters = AdapterDir(directory, max_rank, shape)
        self.directory = self.adapters.directory
        self.shape, self.max_rank = shape, max_rank
        self.max_adapters = max_adapters
        self.device, self.dtype = device, dtype
        self.form = "torch"
        if device.type == "cuda":
            from uip.llm import triton_lora  # imports triton: only where the kernel can run

            self.form = "triton" if triton_lora.AVAILABLE else "torch"
        dims = _dims(shape)
        slots = max_adapters + 1  # slot 0: the base model (no buffer columns)
        # per layer and fused linear: the folded weight [out + S * W, in] and bias (or None)
        self.folded: list[dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = []
        # A [S, W, in] (the folded weight's last rows), B [S, W, out]
        self.buffers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        self.parts = {f: [dims[p][1] for p in parts] for f, parts in FUSED.items()}
        for base in runner.layers:
            layer, folded = {}, {}
            for fused, parts in FUSED.items():
                width = len(parts) * max_rank
                w, bias = getattr(base, fused), getattr(base, f"{fused}_bias")
                out = w.shape[0]
                full = torch.zeros(out + max_adapters * width, w.shape[1], dtype=dtype,
                                   device=device)
                full[:out] = w
                setattr(base, fused, full[:out])  # the old weight is freed here
                if bias is not None:
                    bias = torch.cat([bias, bias.new_zeros(max_adapters * width)])
                    setattr(base, f"{fused}_bias", bias[:out])
                folded[fused] = (full, bias)
                layer[fused] = (
                    full[out:].view(max_adapters, width, w.shape[1]),
                    torch.zeros(max_adapters, width, out, dtype=dtype, device=device))
            self.folded.append(folded)
            self.buffers.append(layer)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the unfolded weights' blocks
        runner.lora = self
        self.names: list[str | None] = [None] * slots  # slot -> adapter (slot 0: base)
        self.fingerprints: list[bytes] = [b""] * slots
        self.refs = [0] * slots
        self._lru: OrderedDict[str, int] = OrderedDict()  # resident adapter -> slot; oldest first
        self.loads = 0

    # ------------------------------------------------------------------ host side

    def available(self) -> list[str]:
        return self.adapters.available()

    def read(self, name: str) -> Adapter:
        return self.adapters.read(name)

    def resident(self, name: str) -> bool:
        return name in self._lru

    # ------------------------------------------------------------------ slots (engine thread)

    def acquire(self, name: str, adapter: Adapter | None) -> int | None:
        """A slot holding `name` for one more request (loading `adapter` into the least
        recently used free slot if needed); None when every slot is in use."""
        slot = self._lru.get(name)
        if slot is None:
            if adapter is None:
                return None
            slot = self._free_slot()
            if slot is None:
                return None
            self._write(slot, adapter)
        self._lru.move_to_end(name)
        self.refs[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        if slot:
            self.refs[slot] -= 1
            assert self.refs[slot] >= 0, f"LoRA slot {slot} released twice"

    def unload(self, name: str) -> bool:
        """Forget a resident adapter (requests running with it finish with it)."""
        slot = self._lru.pop(name, None)
        if slot is None:
            return False
        self.names[slot] = None
        return True

    def status(self) -> list[dict]:
        return [{"name": n, "slot": s, "requests": self.refs[s]} for n, s in self._lru.items()]

    def _free_slot(self) -> int | None:
        for s in range(1, len(self.names)):
            if self.names[s] is None and self.refs[s] == 0:
                return s
        for name, s in self._lru.items():  # least recently used first
            if self.refs[s] == 0:
                del self._lru[name]
                self.names[s] = None
                return s
        return None

    def _write(self, slot: int, adapter: Adapter) -> None:
        r = self.max_rank
        for i, layer in enumerate(self.buffers):
            for fused, parts in FUSED.items():
                a_buf, b_buf = layer[fused]
                a_buf, b_buf = a_buf[slot - 1], b_buf[slot - 1]
                a_buf.zero_()
                b_buf.zero_()
                col = 0
                for j, (proj, out) in enumerate(zip(parts, self.parts[fused], strict=True)):
                    ab = adapter.weights.get((i, proj))
                    if ab is not None:
                        a, b = ab
                        rank = a.shape[0]
                        a_buf[j * r:j * r + rank] = a.to(self.dtype)
                        b_buf[j * r:j * r + rank, col:col + out] = b.T.to(self.dtype)
                    col += out
        self.names[slot] = adapter.name
        self.fingerprints[slot] = adapter.fingerprint
        self._lru[adapter.name] = slot
        self.loads += 1

    # ------------------------------------------------------------------ the forward pass

    def step(self, row_slots: list[int], form: str | None = None) -> LoraStep | None:
        """The step's LoRA input from each row's slot; None when no row has an adapter.
        Dense up to DENSE_MAX_ROWS[device type] rows, grouped above (see the module doc)."""
        if not any(row_slots):
            return None
        if len(row_slots) <= DENSE_MAX_ROWS.get(self.device.type, 0):
            slots = torch.tensor(row_slots, dtype=torch.long).to(self.device, non_blocking=True)
            return self.dense(slots, form)
        return grouped_step(row_slots, self.max_adapters, self.device)

    def dense(self, slots: torch.Tensor, form: str | None = None) -> LoraStep:
        """The dense form from each row's slot on the device (graph-safe); `form`: one of
        DENSE_FORMS (default: `self.form`)."""
        form = form or self.form
        if form not in DENSE_FORMS:
            raise ValueError(f"unknown LoRA dense form {form!r}; one of {DENSE_FORMS}")
        if form == "triton":
            from uip.llm.triton_lora import lora_expand

            return LoraStep(slots=slots, kernel=lora_expand)
        return LoraStep(slots=slots, onehot=onehot_of(slots, self.max_adapters, self.dtype),
                        fold=form == "torch")

    def linear(self, layer: int, fused: str, x: torch.Tensor, w: torch.Tensor,
               bias: torch.Tensor | None, step: LoraStep) -> torch.Tensor:
        """Fused linear `fused` of `layer` (base weight w, bias) on rows x [T, in] -> [T, out]
        plus each row's adapter delta."""
        a, b = self.buffers[layer][fused]  # [S, W, in], [S, W, out]
        slots, width, out = b.shape
        if step.slots is not None:  # dense
            if step.fold:
                full, full_bias = self.folded[layer][fused]
                yx = F.linear(x, full, full_bias)
                y, xa = yx[:, :out], yx[:, out:]
            else:
                y, xa = F.linear(x, w, bias), F.linear(x, a.view(slots * width, -1))
            b = b.view(slots * width, out)
            if step.kernel is not None:
                return step.kernel(y, xa, step.slots, b, self.max_rank, self.parts[fused])
            return reference_lora_expand(y, xa, step.slots, b, self.max_rank,
                                         self.parts[fused], step.mask(width))
        y = F.linear(x, w, bias)
        if step.single is not None:
            return torch.addmm(y, F.linear(x, a[step.single]), b[step.single])
        a = a.transpose(1, 2)  # [S, in, W], a strided view
        if step.groups is not None:
            a, b = a[step.groups], b[step.groups]
        d = torch.bmm(torch.bmm(x[step.index], a), b)  # [G, M, out]
        return y.index_add_(0, step.rows, d.view(-1, d.shape[-1])[step.pos])
