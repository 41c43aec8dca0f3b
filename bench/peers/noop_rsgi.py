"""The raw-RSGI no-op peer: the ceiling of any Python app on Granian's RSGI interface, which tidegate is served
over (`tidegate.rsgi` says why).

Every ingest route reads the whole body and answers 202 with the same small JSON document as `bench.peers.noop`,
in one `response_bytes` call: no framework, no parsing, no storage. Served as tidegate is (Granian,
`--interface rsgi`; see `bench.peers.serve`).
"""

from __future__ import annotations

import json

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian.rsgi import Scope

INGEST_PATHS = frozenset({"/api/v1/ingest", "/api/v1/ingest/batch", "/api/v1/events"})
HEADERS = [("content-type", "application/json")]


class NoOp:
    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        if scope.method == "POST" and scope.path in INGEST_PATHS:
            body = await proto()
            proto.response_bytes(202, HEADERS, json.dumps({"status": "accepted", "bytes": len(body)}).encode())
        elif scope.path in ("/health/ready", "/health/live"):
            proto.response_bytes(200, HEADERS, b'{"status":"ready"}')
        else:
            proto.response_bytes(404, HEADERS, b'{"status":"not found"}')


app = NoOp()
