"""The admin key as the server's own models check it (the LoRA control requests): the same
key `uip serve` puts behind Triton's restricted APIs, handed to tritonserver's environment."""

from __future__ import annotations

import os
import secrets

from uip.core.inputs import InvalidInput

ADMIN_KEY_ENV = "UIP_ADMIN_KEY"


def check_admin_key(given: object) -> None:
    """Refuse a control request whose key is not the server's (or when it has none)."""
    want = os.environ.get(ADMIN_KEY_ENV)
    if not want:
        raise InvalidInput(f"admin requests are disabled: the server has no admin key "
                           f"(${ADMIN_KEY_ENV}; `uip serve` sets one)")
    if not isinstance(given, str) or not secrets.compare_digest(given.encode(), want.encode()):
        raise InvalidInput("the admin key is missing or wrong (--admin-key or "
                           f"${ADMIN_KEY_ENV})")
