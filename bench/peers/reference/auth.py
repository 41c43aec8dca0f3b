"""Device authentication: the token each device presents, checked against an in-memory dict."""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

DEVICE_TOKENS: dict[str, str] = {}


def load_tokens(path: str | None = None) -> None:
    path = path or os.environ.get("REFERENCE_DEVICE_TOKENS")
    if path:
        DEVICE_TOKENS.update(json.loads(Path(path).read_text()))


async def verify_device(device_id: str, token: str) -> str | None:
    expected = DEVICE_TOKENS.get(device_id)
    if expected is None or not hmac.compare_digest(expected, token):
        return None
    return device_id


load_tokens()
