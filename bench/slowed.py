"""A deliberately slowed tidegate, for demonstrating the release gate. Bench-only: never shipped, never the default.

`create_app()` wraps `tidegate.app:create_app` and burns `BENCH_SLOW_MS` milliseconds of CPU (default 0.2, a busy
loop holding the event loop, as a regression in the hot path would) on every POST before tidegate handles it:

    python -m bench --gate bench/baseline.json --tidegate-app bench.slowed:create_app
    BENCH_SLOW_MS=0.5 python -m bench --quick --gate bench/baseline.json --tidegate-app bench.slowed:create_app
"""

from __future__ import annotations

import asyncio
import os
import time

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian.rsgi import Scope
from tidegate.app import App
from tidegate.app import create_app as create_tidegate_app


class SlowedApp:
    """tidegate's RSGI app, with the CPU of every POST burnt first."""

    def __init__(self, inner: App, slow_ns: int) -> None:
        self.inner = inner
        self.gateway = inner.gateway
        self.slow_ns = slow_ns

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.inner.__rsgi_init__(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.inner.__rsgi_del__(loop)

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        if scope.method == "POST":
            until = time.perf_counter_ns() + self.slow_ns
            while time.perf_counter_ns() < until:
                pass
        await self.inner.__rsgi__(scope, proto)


def create_app() -> SlowedApp:
    return SlowedApp(create_tidegate_app(), int(float(os.environ.get("BENCH_SLOW_MS", "0.2")) * 1_000_000))
