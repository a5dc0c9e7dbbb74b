"""A stand-in for `triton_python_backend_utils` in unit tests (no stub): importing this module
registers it, so `uip.triton.pb` imports; it has what pb's error helpers use."""

from __future__ import annotations

import sys


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, \
        CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


sys.modules.setdefault("triton_python_backend_utils", sys.modules[__name__])
