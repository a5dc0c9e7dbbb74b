"""Building `stable_diffusion` requests with tritonclient (HTTP or gRPC module)."""

from __future__ import annotations

import numpy as np

# input -> numpy dtype of the public contract (all optional but `prompt`)
INPUT_DTYPES = {
    "prompt": np.object_,
    "negative_prompt": np.object_,
    "steps": np.int32,
    "guidance_scale": np.float32,
    "seed": np.int64,
    "height": np.int32,
    "width": np.int32,
    "scheduler": np.object_,
}
TRITON_DTYPES = {np.object_: "BYTES", np.int32: "INT32", np.float32: "FP32", np.int64: "INT64"}


def infer_inputs(mod, prompt: str, **options) -> list:
    """InferInputs of shape [1, 1] for one prompt; options left out (or None) are not sent.

    `mod` is `tritonclient.http` or `tritonclient.grpc`."""
    values = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
    inputs = []
    for name, value in values.items():
        if name not in INPUT_DTYPES:
            raise ValueError(f"unknown stable_diffusion input {name!r}; "
                             f"known: {', '.join(INPUT_DTYPES)}")
        dtype = INPUT_DTYPES[name]
        if dtype is np.object_ and isinstance(value, str):
            value = value.encode("utf-8")
        arr = np.array([[value]], dtype=dtype)
        inp = mod.InferInput(name, list(arr.shape), TRITON_DTYPES[dtype])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs
