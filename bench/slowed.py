"""A deliberately slowed tidegate, for demonstrating the release gate. Bench-only: never shipped, never the default.

`create_app()` wraps `tidegate.app:create_app` and burns `BENCH_SLOW_MS` milliseconds of CPU (default 0.2, a busy
loop holding the event loop, as a regression in the hot path would) on every POST before tidegate handles it:

    python -m bench --gate bench/baseline.json --tidegate-app bench.slowed:create_app
    BENCH_SLOW_MS=0.5 python -m bench --quick --gate bench/baseline.json --tidegate-app bench.slowed:create_app
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Receive, Scope, Send
from tidegate.app import create_app as create_tidegate_app

ASGIApp = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


def create_app() -> ASGIApp:
    inner = create_tidegate_app()
    slow_ns = int(float(os.environ.get("BENCH_SLOW_MS", "0.2")) * 1_000_000)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            until = time.perf_counter_ns() + slow_ns
            while time.perf_counter_ns() < until:
                pass
        await inner(scope, receive, send)

    app.gateway = inner.gateway  # type: ignore[attr-defined]
    return app
