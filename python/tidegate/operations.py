"""The operations endpoints (ordinary Starlette): health, metrics, OpenAPI, capabilities, silent devices, and the
problem+json answers of Starlette's own 404 and 405."""

from __future__ import annotations

import re
import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tidegate._native import Keys
from tidegate.auth import presented_key
from tidegate.gateway import Gateway
from tidegate.openapi import capabilities, openapi_document
from tidegate.problems import Problem


def problem_response(problem: Problem) -> Response:
    return Response(
        problem.body(), problem.status, headers=dict(problem.headers), media_type="application/problem+json"
    )


async def http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(Problem(exc.status_code, slug, detail, headers=(exc.headers or {}).items()))


SILENT_PAGE_DEFAULT = 100
SILENT_PAGE_MAX = 1000
CURSOR = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A cursor is the last device id of the previous page."""


def rfc3339(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def require_operator(gateway: Gateway, request: Request) -> None:
    """The operations endpoints that list the fleet need an operator key: see `require_operator_key`."""
    require_operator_key(gateway.keys, request)


def require_operator_key(keys: Keys | None, request: Request) -> None:
    """The operations and investigation endpoints need an operator key (`tidegate keys add-operator`), as
    `X-Operator-Key` or `Authorization: Bearer`: 401 without one or with an unknown one, 403 with a device's key.
    With auth off (`--no-auth`, development) they are open, like ingest."""
    if keys is None:
        return
    key = presented_key(request.headers.get("x-operator-key"), request.headers.get("authorization"))
    if key is None:
        raise Problem(
            401,
            "missing-credential",
            "send an operator key (tidegate keys add-operator) as X-Operator-Key or Authorization: Bearer",
            headers=[("WWW-Authenticate", 'Bearer realm="tidegate-operations"')],
        )
    if keys.is_operator(key):
        return
    if keys.device_for(key) is not None:
        raise Problem(403, "not-an-operator", "a device key cannot list the fleet; use an operator key")
    raise Problem(
        401,
        "invalid-credential",
        "the operator key is unknown or revoked",
        headers=[("WWW-Authenticate", 'Bearer realm="tidegate-operations", error="invalid_token"')],
    )


def page_query(request: Request) -> tuple[str | None, int]:
    """`cursor` and `limit` of a paginated listing; Problem 400 naming the bad one."""
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and CURSOR.fullmatch(cursor) is None:
        raise Problem(
            400,
            "invalid-query",
            "`cursor` must be the next_cursor of a previous page",
            [{"path": "query:cursor", "message": "not a cursor this endpoint returned"}],
        )
    raw = request.query_params.get("limit", str(SILENT_PAGE_DEFAULT))
    if not raw.isdigit() or not 1 <= int(raw) <= SILENT_PAGE_MAX:
        raise Problem(
            400,
            "invalid-query",
            f"`limit` must be a whole number from 1 to {SILENT_PAGE_MAX}",
            [{"path": "query:limit", "message": f"not a page size: {raw[:32]!r}"}],
        )
    return cursor, int(raw)


def operations_routes(gateway: Gateway) -> list[Route]:
    settings = gateway.settings

    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(_request: Request) -> Response:
        checks = {
            "started": gateway.ready,
            "not_draining": not gateway.shutting_down,
            "spool_has_room": not gateway.spool_full,
            "spool_writable": not gateway.spool_failing(),
            "kafka": "not configured",
            "dry_run": settings.dry_run,
        }
        if settings.kafka:
            delivery = gateway.delivery
            checks["kafka"] = delivery.get("breaker", "delivery process not running")
            checks["kafka_reachable"] = delivery.get("kafka_reachable")
            checks["kafka_topics_missing"] = delivery.get("kafka_topics_missing", [])
            checks["kafka_required"] = settings.ready_requires_kafka
        ok = gateway.is_ready()
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        await gateway.silence.snapshot()  # the device gauges read it (scanned in a thread at most once a second)
        return PlainTextResponse(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document(settings))

    async def caps(_request: Request) -> Response:
        return JSONResponse(capabilities(settings))

    async def silent(request: Request) -> Response:
        """Silent devices (unheard for 3x their expected interval, the gauge's rule), by device id, a page at a
        time, from a snapshot at most `silence_scan_interval_s` old: the request path never pays for it."""
        try:
            require_operator(gateway, request)
            cursor, limit = page_query(request)
        except Problem as problem:
            return problem_response(problem)
        snapshot = await gateway.silence.snapshot()
        page, next_cursor = snapshot.page(cursor, limit)
        as_of = snapshot.taken_ms
        factor = gateway.devices.silence_factor
        devices = [
            {
                "device_id": device,
                "last_seen": rfc3339(last_seen_ms),
                "silent_for_s": (as_of - last_seen_ms) / 1000,
                "expected_interval_s": interval_ms / 1000,
                "threshold_s": interval_ms * factor / 1000,
                "alerted": alerted,
            }
            for device, last_seen_ms, interval_ms, alerted in page
        ]
        return JSONResponse(
            {
                "as_of": rfc3339(as_of),
                "silence_factor": factor,
                "count": snapshot.silent,
                "devices": devices,
                "next_cursor": next_cursor,
            }
        )

    return [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/v1/capabilities", caps, methods=["GET"]),
        Route("/api/v1/devices/silent", silent, methods=["GET"]),
    ]
