"""GPU counting from `nvidia-smi --list-gpus` (format as seen on the H200/H100 machines) and
CUDA_VISIBLE_DEVICES, as CUDA reads it."""

from __future__ import annotations

import pytest

from uip.trtllm.gpus import count_gpus

TWO = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aac14555-1629-2bce-97c8-a82aa0e42366)\n"
       "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5e1d0c2a-9f1b-4c3e-8a7d-1b2c3d4e5f60)\n")


@pytest.mark.parametrize("visible, want", [
    (None, 2), ("0", 1), ("0,1", 2), ("1,0", 2), ("", 0), ("-1", 0), ("0,-1,1", 1),
    ("1", 1), ("2", 0), ("0,2,1", 1), ("GPU-5e1d", 1), ("GPU-aac14555,GPU-5e1d0c2a", 2),
    ("GPU-ffff", 0), ("0,0", 1),
])
def test_cuda_visible_devices(visible, want):
    assert count_gpus(TWO, visible) == want


def test_no_nvidia_smi_means_no_gpu():
    assert count_gpus(None, None) == 0
    assert count_gpus("", "0") == 0
    assert count_gpus("No devices were found\n", None) == 0
