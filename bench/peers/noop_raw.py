"""The raw-ASGI no-op peer: the ceiling of any Python app on Granian, below Starlette's routing and `Request`.

Every ingest route reads the whole body (every `http.request` message) and answers 202 with the same small JSON
document as `bench.peers.noop`, straight through the ASGI `send` calls: no framework, no parsing, no storage.
Served exactly as tidegate is (Granian, `--interface asgi`; see `bench.peers.serve`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

INGEST_PATHS = frozenset({"/api/v1/ingest", "/api/v1/ingest/batch", "/api/v1/events"})
READY = b'{"status":"ready"}'


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["method"] == "POST" and path in INGEST_PATHS:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await respond(send, 202, json.dumps({"status": "accepted", "bytes": size}).encode())
    elif path in ("/health/ready", "/health/live"):
        await respond(send, 200, READY)
    else:
        await respond(send, 404, b'{"status":"not found"}')
