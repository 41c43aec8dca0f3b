"""In-memory rate limiter (use Redis in production): the seed's sliding window, per device."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, max_requests: float = 10, window_seconds: float = 1.0) -> None:
        self.max_requests = max_requests
        self.window = window_seconds
        self.device_request_counts: dict[str, list[float]] = {}

    async def allow(self, device_id: str) -> bool:
        now = time.time()
        if device_id not in self.device_request_counts:
            self.device_request_counts[device_id] = []
        # Remove expired entries
        self.device_request_counts[device_id] = [
            ts for ts in self.device_request_counts[device_id] if now - ts < self.window
        ]
        if len(self.device_request_counts[device_id]) >= self.max_requests:
            return False
        self.device_request_counts[device_id].append(now)
        return True
