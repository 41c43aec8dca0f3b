"""The HTTP service: routes and lifespan. Granian runs `create_app` (factory form, `--interface rsgi`).

POSTs to the ingest routes go straight to the worker's ingest edge (`tidegate.ingest`) over RSGI; everything else
(health, metrics, OpenAPI, capabilities, silent devices, 404/405) is ordinary Starlette (`tidegate.operations`),
and so are the archive's investigation endpoints (`tidegate.archive.http`), run through the RSGI-to-ASGI bridge
(`tidegate.rsgi`). The worker's state and lifecycle are `tidegate.gateway.Gateway`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import granian._futures as granian_futures  # the per-request scheduler (`_screen_as_requests_arrive`)
from granian._granian import RSGIHTTPProtocol as HTTPProtocol  # granian.rsgi re-exports it, untyped
from granian.rsgi import Scope
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate.archive.http import archive_routes
from tidegate.config import Settings, load_settings
from tidegate.gateway import Gateway
from tidegate.loop import high_context, run_first_lane
from tidegate.operations import http_exception, operations_routes
from tidegate.rsgi import serve_asgi
from tidegate.signals import stop_once_even_when_the_wakeup_pipe_is_full

log = logging.getLogger("tidegate")


class App:
    """One worker's RSGI application: `__rsgi_init__` starts the gateway (`Gateway.lifespan`) before Granian serves,
    `__rsgi_del__` stops it once Granian has stopped."""

    def __init__(self, gateway: Gateway, operations: Starlette) -> None:
        self.gateway = gateway
        self.operations = operations
        self._routes = gateway.routes
        self._handle = gateway.edge.handle
        self._max_body_bytes = gateway.settings.max_body_bytes
        self._lifespan: contextlib.AbstractAsyncContextManager[None] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Granian gave SIGINT and SIGTERM loop handlers (they stop the worker) before calling this.
        # The refusals held (`Admission.screen`) are answered as the stop begins, not left to the end of the drain.
        stop_once_even_when_the_wakeup_pipe_is_full(
            loop, (signal.SIGINT, signal.SIGTERM), first=self.gateway.admission.stop_holding
        )
        # High priority's callbacks run first; the loop is woken only when it waits (`tidegate.loop`).
        run_first_lane(loop)
        self._screen_as_requests_arrive()
        self._lifespan = self.gateway.lifespan()
        try:
            loop.run_until_complete(self._lifespan.__aenter__())
        except Exception:
            log.exception("tidegate: the worker could not start")
            sys.exit(1)
        # What the worker holds once started (modules, tables, rendered answers) lives as long as it does: out of
        # the collector's sight, a full collection walks only what requests allocate. Measured at twice capacity
        # (a `gc.callbacks` timer in the worker, 10 s): full collections took 230 ms in all, the longest 54 ms (a
        # pause every request then waits out); frozen, 9 ms in all, the longest 4 ms.
        gc.freeze()

    def _screen_as_requests_arrive(self) -> None:
        """Has Granian run admission's load checks (`IngestEdge.screen`) on its own thread as each request arrives,
        before queueing it for the event loop. Granian offers no hook for it: its functions that make the
        per-request scheduling function are wrapped (`granian._futures`, both task implementations; they are looked
        up when the worker's scheduler is made, right after this). Should they be missing (another Granian), the
        loop makes the whole decision as before."""
        factories = ("_cbsched_aioschedule", "_cbsched_schedule")
        if not all(callable(getattr(granian_futures, name, None)) for name in factories):
            log.warning("tidegate: Granian's scheduler is not the one known; load is shed on the event loop only")
            return
        for name in factories:
            make_schedule = getattr(granian_futures, name)
            setattr(granian_futures, name, functools.partial(self._screening_schedule, make_schedule))

    def _screening_schedule(
        self, make_schedule: Callable[..., Callable[[Any], None]], loop: Any, context: Any, *args: Any
    ) -> Callable[[Any], None]:
        """Granian's per-request scheduling function (`make_schedule(loop, context, ...)`, which starts each
        request's task in a copy of `context`), with the screen in front of it, and a second one that starts
        high-priority requests in the loop's first lane (`tidegate.loop`)."""
        return functools.partial(
            self._screen_then_schedule,
            make_schedule(loop, context, *args),
            make_schedule(loop, high_context(context), *args),
        )

    def _screen_then_schedule(
        self, schedule: Callable[[Any], None], schedule_first: Callable[[Any], None], watcher: Any
    ) -> None:
        """On Granian's thread, per request: answered here when screened out, else queued for the loop (high
        priority in its first lane)."""
        edge = self.gateway.edge
        # Set here, not when wrapping: should Granian make its scheduler otherwise, no request is screened and the
        # loop keeps making the load checks.
        edge.screening = True
        try:
            scope = watcher.scope
            route = self._routes.get(scope.path) if scope.method == "POST" else None
            if route is not None:
                priority = edge.screen(route, scope, watcher.proto)
                if priority is None:
                    # Answered, or held to be answered later (`Admission.screen`): not `watcher.done()`, which
                    # answers 500 a request not answered yet.
                    return
                if priority == "high":
                    schedule = schedule_first
        except BaseException as error:  # as Granian's own wrapper hands an app's error over
            watcher.err(error)
            return
        try:
            schedule(watcher)
        except BaseException:
            # Not queued (the loop closed as the worker stops): it never reaches the loop, which would take its
            # cost out of the loop's queue.
            if route is not None:
                self.gateway.admission.left_queue(scope.headers.items())
            raise

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lifespan is not None:
            loop.run_until_complete(self._lifespan.__aexit__(None, None, None))

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        if scope.method == "POST":
            route = self._routes.get(scope.path)
            if route is not None:
                await self._handle(route, scope, proto)
                return
        await serve_asgi(self.operations, scope, proto, max_body_bytes=self._max_body_bytes)


def create_app(settings: Settings | None = None) -> App:
    """The RSGI application (Granian runs it with `--interface rsgi`; use the factory form)."""
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
        exception_handlers={HTTPException: http_exception},
    )
    starlette.state.gateway = gateway
    return App(gateway, starlette)
