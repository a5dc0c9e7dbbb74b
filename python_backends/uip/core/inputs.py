"""Request validation shared by every model: one contract, one validator (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


class InvalidInput(ValueError):
    """A bad request input; becomes INVALID_ARG with this message."""


@dataclass(frozen=True)
class Scalar:
    """An optional per-request scalar input (shape [1] or [1, 1]) with range checks."""

    name: str
    dtype: type
    default: object = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False

    def read(self, inputs: Mapping[str, np.ndarray]):
        arr = inputs.get(self.name)
        if arr is None:
            return self.default
        if arr.size != 1:
            raise InvalidInput(f"'{self.name}' must hold one value per request, got shape "
                               f"{list(arr.shape)}")
        value = arr.reshape(-1)[0]
        if self.dtype is bool:
            return bool(value)
        if self.dtype is str:
            return as_text(value, self.name)
        value = self.dtype(value)
        if isinstance(value, float) and not np.isfinite(value):
            raise InvalidInput(f"'{self.name}' must be a finite number, got {value}")
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value < lo or (self.exclusive_minimum and value == lo)):
            op = ">" if self.exclusive_minimum else ">="
            raise InvalidInput(f"'{self.name}' must be {op} {lo}, got {value}")
        if hi is not None and value > hi:
            raise InvalidInput(f"'{self.name}' must be <= {hi}, got {value}")
        return value


def as_text(value: object, name: str) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"'{name}' must be UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise InvalidInput(f"'{name}' must be BYTES (UTF-8 text), got {type(value).__name__}")


def texts(inputs: Mapping[str, np.ndarray], name: str, required: bool = True) -> list[str]:
    """A BYTES tensor as a flat list of strings."""
    arr = inputs.get(name)
    if arr is None:
        if required:
            raise InvalidInput(f"input '{name}' is required")
        return []
    return [as_text(v, name) for v in arr.reshape(-1)]


def one_text(inputs: Mapping[str, np.ndarray], name: str) -> str:
    values = texts(inputs, name)
    if len(values) != 1:
        raise InvalidInput(f"'{name}' must hold exactly one string per request, got {len(values)}")
    return values[0]
