"""The no-op peer: the ceiling of a thin Starlette app on Granian.

Every ingest route reads the whole body and answers 202 with a small JSON document through Starlette's default
`Request` / `JSONResponse` path: no parsing, no validation, no storage. Served exactly as tidegate is (Granian,
`--interface asgi`, one worker; see `bench.peers.serve`).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"status": "accepted", "bytes": len(body)}, status_code=202)


async def ready(_request: Request) -> Response:
    return JSONResponse({"status": "ready"})


app = Starlette(
    routes=[
        Route("/api/v1/ingest", accept, methods=["POST"]),
        Route("/api/v1/ingest/batch", accept, methods=["POST"]),
        Route("/api/v1/events", accept, methods=["POST"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/health/live", ready, methods=["GET"]),
    ]
)
