"""RFC 9457 problem details: every client error is one of these, with a stable type URI and field paths."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

PROBLEM_TYPE = "urn:tidegate:problem:"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


class Problem(Exception):
    """A client-facing failure, rendered as `application/problem+json`."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        errors: Sequence[dict[str, object]] = (),
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = list(errors)
        self.headers = list(headers)

    def body(self) -> bytes:
        document: dict[str, object] = {
            "type": PROBLEM_TYPE + self.slug,
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "errors": self.errors,
        }
        return json.dumps(document, separators=(",", ":")).encode()
