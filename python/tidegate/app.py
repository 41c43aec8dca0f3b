"""The HTTP service: routes and lifespan. Granian runs `create_app` (factory form, `--interface asgi`).

POSTs to the ingest routes go straight to the worker's raw-ASGI ingest edge (`tidegate.ingest`); everything else
(health, metrics, OpenAPI, capabilities, silent devices, 404/405) is ordinary Starlette (`tidegate.operations`),
and so are the archive's investigation endpoints (`tidegate.archive.http`).
The worker's state and lifecycle are `tidegate.gateway.Gateway`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidegate.archive.http import archive_routes
from tidegate.config import Settings, load_settings
from tidegate.gateway import Gateway
from tidegate.operations import http_exception, operations_routes

log = logging.getLogger("tidegate")


def create_app(settings: Settings | None = None) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
    """The ASGI application (Granian runs it with `--interface asgi`; use the factory form)."""
    settings = settings or load_settings()
    if not log.handlers:
        # Structured JSON lines on stderr, one per request at most (sampled under load).
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    gateway = Gateway(settings)

    async def unreachable(_request: Request) -> Response:
        raise HTTPException(405)

    starlette = Starlette(
        routes=[
            *operations_routes(gateway),
            *archive_routes(settings, gateway.keys),
            # The ingest routes never reach Starlette for a POST; these make it answer 405 to other methods.
            *(Route(path, unreachable, methods=["POST"]) for path in gateway.routes),
        ],
        lifespan=gateway.lifespan,
        exception_handlers={HTTPException: http_exception},
    )
    starlette.state.gateway = gateway
    fast_routes = gateway.routes
    handle = gateway.edge.handle

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = fast_routes.get(scope["path"])
            if route is not None:
                await handle(route, scope, receive, send)
                return
        await starlette(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    return app
