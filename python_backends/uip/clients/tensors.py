"""numpy arrays as tritonclient gRPC inputs: the one helper every client-side caller uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def grpc_input(name: str, array: np.ndarray):
    """A `tritonclient.grpc.InferInput` (also the aio client's) holding `array`; its Triton
    dtype follows the array's (object arrays are BYTES)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    t.set_data_from_numpy(array)
    return t


def grpc_inputs(arrays: Mapping[str, np.ndarray]) -> list:
    return [grpc_input(name, array) for name, array in arrays.items()]
