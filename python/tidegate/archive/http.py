"""The investigation endpoints (operator keys only): one event with every occurrence, events by entity, source,
type and time (paginated), late arrivals, counts per hour. Each query runs in a thread (DuckDB), at most
`CONCURRENT_QUERIES` at once per worker, so the event loop keeps serving ingest meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

import duckdb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidegate._native import Keys
from tidegate.archive.query import MAX_PAGE, ArchiveQuery, InvalidQuery, parse_time
from tidegate.archive.store import ArchiveStore
from tidegate.config import Settings
from tidegate.operations import require_operator_key
from tidegate.problems import Problem

__all__ = ["archive_routes"]

log = logging.getLogger("tidegate")

CONCURRENT_QUERIES = 2
EVENT_ID = re.compile(r"[0-9a-f]{32}")

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _problem(problem: Problem) -> Response:
    return Response(
        problem.body(), problem.status, headers=dict(problem.headers), media_type="application/problem+json"
    )


def check_operator(keys: Keys | None, request: Request) -> None:
    """The archive is read with an operator key, as the other operations endpoints are."""
    require_operator_key(keys, request)


def _int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidQuery(name, f"not an integer: {raw[:64]!r}") from None
    if not minimum <= value <= maximum:
        raise InvalidQuery(name, f"must be within {minimum} and {maximum}")
    return value


def archive_routes(settings: Settings, keys: Keys | None) -> list[Route]:
    query = ArchiveQuery(ArchiveStore.from_settings(settings)) if settings.archive else None
    running = asyncio.Semaphore(CONCURRENT_QUERIES)

    def endpoint(work: Callable[[ArchiveQuery, Request], Any]) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                check_operator(keys, request)
                if query is None:
                    raise Problem(404, "no-archive", "the archive is off on this service (archive = false)")
                async with running:
                    # DuckDB releases the GIL while it scans: the event loop goes on serving meanwhile.
                    answer = await asyncio.to_thread(work, query, request)
            except InvalidQuery as error:
                return _problem(
                    Problem(
                        400, "invalid-query", str(error), [{"path": f"query:{error.parameter}", "message": str(error)}]
                    )
                )
            except Problem as problem:
                return _problem(problem)
            except (duckdb.Error, OSError) as error:  # a file that cannot be read, a bucket away: not the client's
                log.error(json.dumps({"event": "archive_query_failed", "error": f"{type(error).__name__}: {error}"}))
                return _problem(
                    Problem(
                        503,
                        "archive-unavailable",
                        "the archive cannot be read right now",
                        headers=[("Retry-After", "5")],
                    )
                )
            if answer is None:
                return _problem(Problem(404, "not-archived", "no record of this event id is in the archive (yet)"))
            return JSONResponse(answer)

        return handle

    def one(archive: ArchiveQuery, request: Request) -> object:
        event_id = request.path_params["event_id"].lower()
        if EVENT_ID.fullmatch(event_id) is None:
            raise InvalidQuery("event_id", "an event id is 32 hexadecimal digits")
        return archive.event(event_id)

    def listing(archive: ArchiveQuery, request: Request) -> object:
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status.upper() not in ("ACCEPTED", "DUPLICATE"):
            raise InvalidQuery("status", "ACCEPTED or DUPLICATE")
        return archive.events(
            entity_id=params.get("entity_id") or None,
            source=params.get("source") or None,
            event_type=params.get("event_type") or None,
            start=parse_time("from", params.get("from")),
            end=parse_time("to", params.get("to")),
            status=status,
            limit=_int(request, "limit", 100, 1, MAX_PAGE),
            cursor=params.get("cursor") or None,
        )

    def late(archive: ArchiveQuery, request: Request) -> object:
        params = request.query_params
        return archive.late(
            _int(request, "min_lag_ms", 60_000, 0, 2**62),
            source=params.get("source") or None,
            event_type=params.get("event_type") or None,
            start=parse_time("from", params.get("from")),
            end=parse_time("to", params.get("to")),
            limit=_int(request, "limit", 100, 1, MAX_PAGE),
        )

    def hourly(archive: ArchiveQuery, request: Request) -> object:
        params = request.query_params
        return archive.hourly(
            source=params.get("source") or None,
            event_type=params.get("event_type") or None,
            start=parse_time("from", params.get("from")),
            end=parse_time("to", params.get("to")),
        )

    return [
        Route("/api/v1/events", endpoint(listing), methods=["GET"]),
        Route("/api/v1/events/late", endpoint(late), methods=["GET"]),
        Route("/api/v1/events/hourly", endpoint(hourly), methods=["GET"]),
        Route("/api/v1/events/{event_id}", endpoint(one), methods=["GET"]),
    ]
