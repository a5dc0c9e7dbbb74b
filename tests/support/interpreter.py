"""Without a GPU, OpenAI Triton kernels run in Triton's interpreter. Both conftests import this
first: the mode must be set before anything imports triton (peft, torch's compiler and our
kernels do), as its library functions are bound to it at import."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
