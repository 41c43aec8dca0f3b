"""The operations endpoints (ordinary Starlette): health, metrics, OpenAPI, capabilities, silent devices, and the
problem+json answers of Starlette's own 404 and 405."""

from __future__ import annotations

import math
import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

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
        return PlainTextResponse(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document(settings))

    async def caps(_request: Request) -> Response:
        return JSONResponse(capabilities(settings))

    async def silent(request: Request) -> Response:
        raw = request.query_params.get("for", "300")
        try:
            threshold = float(raw)
            if not math.isfinite(threshold) or threshold < 0:
                raise ValueError(raw)
        except ValueError:
            return problem_response(
                Problem(
                    400,
                    "invalid-query",
                    "`for` must be a non-negative number of seconds",
                    [{"path": "query:for", "message": f"not a number of seconds: {raw!r}"}],
                )
            )
        now = time.time()
        devices = sorted(
            (
                {"device_id": d, "last_seen": round(seen, 3), "silent_for_s": round(now - seen, 3)}
                for d, seen in gateway.last_seen.items()
                if now - seen >= threshold
            ),
            key=lambda item: -float(item["silent_for_s"]),  # type: ignore[arg-type]
        )
        return JSONResponse({"threshold_s": threshold, "count": len(devices), "devices": devices})

    return [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/v1/capabilities", caps, methods=["GET"]),
        Route("/api/v1/devices/silent", silent, methods=["GET"]),
    ]
