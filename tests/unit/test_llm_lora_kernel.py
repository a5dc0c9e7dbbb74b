"""The dense LoRA form's Triton expand kernel (`triton_lora.lora_expand`) on CPU under
`TRITON_INTERPRET=1` (fp32): equal to its torch reference (the one-hot mask and addmm) for
several slot mixes (base rows, one adapter, every slot, padding rows past a row tile), fused
parts of unequal widths and the strided views the folded GEMM gives; and a whole mixed decode
step of llm-tiny with PEFT adapters gives the same logits in every dense form (Triton kernel,
torch, the unfused shrink) and the grouped one, which differ from the base model's."""

from __future__ import annotations

import os

import pytest
import torch

from uip.llm import lora, triton_lora

# CPU: the interpreter (tests/unit/conftest.py sets TRITON_INTERPRET=1 without a GPU)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not triton_lora.AVAILABLE or (DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs the triton package (and a GPU or TRITON_INTERPRET=1)")


def _block_diagonal_b(slots: int, rank: int, parts: list[int], g) -> torch.Tensor:
    """[slots * W, out] as LoraCache writes B: part j's rank rows only on its own columns."""
    b = torch.zeros(slots, rank * len(parts), sum(parts))
    col = 0
    for j, width in enumerate(parts):
        b[:, j * rank:(j + 1) * rank, col:col + width] = torch.randn(slots, rank, width,
                                                                   generator=g)
        col += width
    return b.view(-1, sum(parts))


@pytest.mark.parametrize("parts", [[40, 8, 8], [24, 24], [72]])
@pytest.mark.parametrize("row_slots", [
    [0, 0, 0],  # every row on the base: y unchanged
    [2] * 5,  # one adapter
    [0, 1, 2, 3, 1, 0, 3],  # every slot and base rows
    [3, 0] * 35,  # 70 rows: two row tiles
])
def test_expand_kernel_equals_the_torch_form(parts, row_slots):
    g = torch.Generator().manual_seed(len(row_slots) + len(parts))
    slots, rank, t = 3, 4, len(row_slots)
    out, k = sum(parts), slots * rank * len(parts)
    b = _block_diagonal_b(slots, rank, parts, g).to(DEVICE)
    yx = torch.randn(t, out + k, generator=g).to(DEVICE)  # the folded GEMM's [y | xa]
    meta = torch.zeros(t, 5, dtype=torch.long, device=DEVICE)  # the graphs' buffer: a column
    meta[:, 4] = torch.tensor(row_slots)
    want = lora.reference_lora_expand(yx[:, :out].clone(), yx[:, out:].clone(),
                                      meta[:, 4], b, rank, parts)
    got = yx.clone()
    triton_lora.lora_expand(got[:, :out], got[:, out:], meta[:, 4], b, rank, parts)
    torch.testing.assert_close(got[:, :out], want)
    torch.testing.assert_close(got[:, out:], yx[:, out:])  # xa is only read
    base = [i for i, s in enumerate(row_slots) if s == 0]
    assert torch.equal(got[base, :out], yx[base, :out])


def test_expand_kernel_checks_shapes():
    y, xa, b = torch.zeros(2, 16), torch.zeros(2, 8), torch.zeros(8, 16)
    with pytest.raises(ValueError, match="do not fit"):
        triton_lora.lora_expand(y, xa, torch.zeros(2, dtype=torch.long), b, 4, [8, 4])


def test_mixed_step_is_the_same_in_every_form(llm_tiny_dir, llm_tiny_lora_dir):
    from uip.llm.llama import LlamaRunner
    from uip.llm.paged_attention import build_meta, to_device

    runner = LlamaRunner(llm_tiny_dir, device=DEVICE)
    cache = lora.LoraCache(llm_tiny_lora_dir, runner, max_adapters=3, max_rank=8)
    held = [cache.acquire(n, cache.read(n)) for n in ("alpha", "beta")]  # slots 1, 2
    kv = runner.allocate_cache(8, 16)
    row_slots = [held[0], 0, held[1], held[1], 0, held[0]]
    rows = len(row_slots)
    tables, lens = [[i] for i in range(rows)], [5 + i for i in range(rows)]
    slots = [t[0] * 16 + n - 1 for t, n in zip(tables, lens, strict=True)]
    ids = to_device([11 + 7 * i for i in range(rows)], runner.device)

    def logits(step):
        meta = build_meta(slots, tables, lens, [], 16, runner.device)
        return runner.forward(ids, to_device([n - 1 for n in lens], runner.device), meta, kv,
                              torch.arange(rows, device=runner.device), step)

    with torch.inference_mode():
        dense = to_device(row_slots, runner.device)
        forms = {form: logits(cache.dense(dense, form)) for form in lora.DENSE_FORMS}
        forms["grouped"] = logits(lora.grouped_step(row_slots, 3, runner.device))
        base = logits(None)
    for form, got in forms.items():
        torch.testing.assert_close(got, forms["unfused"], atol=1e-4, rtol=1e-4, msg=form)
    adapter_rows = [i for i, s in enumerate(row_slots) if s]
    base_rows = [i for i, s in enumerate(row_slots) if not s]
    torch.testing.assert_close(forms["triton"][base_rows], base[base_rows])
    assert (forms["triton"][adapter_rows] - base[adapter_rows]).abs().amax(-1).min() > 1e-3


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 on the GPU")
def test_expand_kernel_in_bf16_on_the_gpu():
    g = torch.Generator().manual_seed(3)
    parts, rank, slots = [4096, 1024, 1024], 16, 8
    out, k = sum(parts), slots * rank * len(parts)
    b = _block_diagonal_b(slots, rank, parts, g).mul_(0.05).to(DEVICE, torch.bfloat16)
    yx = torch.randn(32, out + k, generator=g).to(DEVICE, torch.bfloat16)
    row_slots = torch.tensor([i % (slots + 1) for i in range(32)], device=DEVICE)
    want = lora.reference_lora_expand(yx[:, :out].float(), yx[:, out:].float(),
                                      row_slots, b.float(), rank, parts)
    got = triton_lora.lora_expand(yx[:, :out], yx[:, out:], row_slots, b, rank, parts)
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=2e-2)
