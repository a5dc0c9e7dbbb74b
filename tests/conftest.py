"""Loaded before every other conftest and test module: without a GPU, OpenAI Triton kernels
run in Triton's interpreter. It must be set before anything imports triton (peft, torch's
compiler and our kernels do): its library functions are bound to the mode at import."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
