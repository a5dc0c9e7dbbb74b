"""`stable_diffusion` requests with tritonclient (HTTP or gRPC module): building the inputs
(`infer_inputs`), and one request to a PNG (`txt2img`, behind `uip txt2img`)."""

from __future__ import annotations

import time
from pathlib import Path

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
    # stable_diffusion_xl's size conditioning
    "original_height": np.int32,
    "original_width": np.int32,
    "crop_top": np.int32,
    "crop_left": np.int32,
    "target_height": np.int32,
    "target_width": np.int32,
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


def txt2img(prompt: str, output: Path, protocol: str = "grpc", url: str | None = None,
            model: str = "stable_diffusion", timeout: float = 600.0,
            **options) -> tuple[np.ndarray, float]:
    """One request; writes its image to `output` (PNG) and returns it, uint8 [H, W, 3], with the
    request's seconds. Options left out (or None) are not sent, so the server's defaults apply.

    A refused request raises tritonclient.utils.InferenceServerException (its message says
    why)."""
    if protocol == "grpc":
        import tritonclient.grpc as mod
    elif protocol == "http":
        import tritonclient.http as mod
    else:
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    url = url or ("localhost:8001" if protocol == "grpc" else "localhost:8000")
    if protocol == "grpc":
        client = mod.InferenceServerClient(url)
        call = dict(client_timeout=timeout)
    else:
        client = mod.InferenceServerClient(url, network_timeout=timeout,
                                           connection_timeout=timeout)
        call = {}
    start = time.perf_counter()
    result = client.infer(model, infer_inputs(mod, prompt, **options), **call)
    image = result.as_numpy("image")[0]
    elapsed = time.perf_counter() - start

    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(output)
    return image, elapsed
