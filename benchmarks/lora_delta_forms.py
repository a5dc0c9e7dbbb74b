"""The forms of a mixed-adapter LoRA delta on llm-tiny's shapes (CPU, one thread): µs of CPU
per fused linear and per layer for ROWS decode rows over 8 rank-8 adapters (row i on adapter
i % 8), each form checked against the dense one. docs/benchmarks.md (LLM with LoRA) has the
figures.

    .venv/bin/python benchmarks/lora_delta_forms.py [ROWS]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

SLOTS, RANK = 8, 8
SHAPES = {"qkv": (128, 256, 3), "o": (128, 128, 1), "gate_up": (128, 512, 2),
          "down": (256, 128, 1)}  # fused linear: in, out, parts


def bench(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t) / n * 1e6)
    return best


def forms(rows: int, d_in: int, d_out: int, parts: int) -> dict:
    width = parts * RANK
    w, x = torch.randn(d_out, d_in) * .05, torch.randn(rows, d_in)
    a9 = torch.randn(d_in, SLOTS + 1, width) * .05  # slot 0: the base, zeros
    a9[:, 0] = 0
    b9 = torch.randn(SLOTS + 1, width, d_out) * .05
    b9[0] = 0
    a8, b8 = a9[:, 1:].contiguous(), b9[1:].contiguous()
    slots = torch.tensor([1 + i % SLOTS for i in range(rows)])
    onehot = F.one_hot(slots, SLOTS + 1).float()
    m9, m8 = onehot.repeat_interleave(width, 1), onehot[:, 1:].repeat_interleave(width, 1)
    wcat = torch.cat([w, a8.reshape(d_in, -1).T]).contiguous()
    a_sm = a9.permute(1, 0, 2).contiguous()  # [slots, in, W]
    groups = [[i for i, s in enumerate(slots.tolist()) if s == g]
              for g in range(1, SLOTS + 1)]
    m = max(map(len, groups))
    index = torch.tensor([g + [g[0]] * (m - len(g)) for g in groups])
    pos = torch.empty(rows, dtype=torch.long)
    for gi, g in enumerate(groups):
        pos[torch.tensor(g)] = torch.arange(gi * m, gi * m + len(g))
    xs = x[torch.argsort(slots, stable=True)].contiguous()

    def base():
        return F.linear(x, w)

    def dense9():
        xa = x @ a9.view(d_in, -1)
        return torch.addmm(F.linear(x, w), xa.mul_(m9), b9.view(-1, d_out))

    def dense8():
        xa = x @ a8.view(d_in, -1)
        return torch.addmm(F.linear(x, w), xa.mul_(m8), b8.view(-1, d_out))

    def fused_base_and_a():
        full = F.linear(x, wcat)
        return torch.addmm(full[:, :d_out], full[:, d_out:] * m8, b8.view(-1, d_out))

    def bgmv():
        xa = torch.bmm(x[:, None], a_sm[slots])
        return torch.baddbmm(F.linear(x, w)[:, None], xa, b9[slots])[:, 0]

    def per_adapter():
        y = F.linear(x, w)
        for s in range(1, SLOTS + 1):
            idx = (slots == s).nonzero()[:, 0]
            if len(idx):
                y.index_add_(0, idx, (x[idx] @ a9[:, s]) @ b9[s])
        return y

    def grouped():
        d = torch.bmm(torch.bmm(x[index], a_sm[1:]), b9[1:])
        return F.linear(x, w).add_(d.view(-1, d_out)[pos])

    def grouped_sorted():  # rows already in equal groups: views only (other row order)
        d = torch.bmm(torch.bmm(xs.view(SLOTS, -1, d_in), a_sm[1:]), b9[1:])
        return F.linear(xs, w).add_(d.view(-1, d_out))

    ref = dense9()
    for fn in (dense8, fused_base_and_a, bgmv, per_adapter, grouped):
        assert torch.allclose(fn(), ref, atol=1e-4), fn.__name__
    return {fn.__name__: bench(fn) for fn in (base, dense9, dense8, fused_base_and_a, bgmv,
                                             per_adapter, grouped, grouped_sorted)}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    total: dict[str, float] = {}
    for name, shape in SHAPES.items():
        row = forms(rows, *shape)
        print(name, {k: round(v, 1) for k, v in row.items()})
        for k, v in row.items():
            total[k] = total.get(k, 0.0) + v
    print("per layer, µs added to the base linears:",
          {k: round(v - total["base"], 1) for k, v in total.items() if k != "base"})


if __name__ == "__main__":
    main()
