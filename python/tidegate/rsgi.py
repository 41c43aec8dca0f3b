"""Granian's RSGI interface, which tidegate is served over, and the bridge that runs an ASGI app (the Starlette
operations endpoints) for one RSGI request.

Why RSGI rather than ASGI: an RSGI answer is one synchronous call with the whole body (`response_bytes`), the body
one await, and the headers a native object read on demand; ASGI costs a dict per message, an awaited `send` per
message and a header list of bytes pairs built for every request. Measured with the same no-op app on Granian
(`wrk -t2 -c64`, single readings): 20,000-21,500 req/s over RSGI against 12,400-13,500 over ASGI, and an answer
sent without reading the body (what a refusal does) 35,000 against 13,000. A refusal under overload must cost far
less than an acceptance, or shedding frees nothing (issue 11).

No maintained package adapts ASGI apps to RSGI; the operations endpoints are small requests answered whole, so
the bridge reads the body and collects the answer, with no streaming either way."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from granian._granian import RSGIHTTPProtocol as HTTPProtocol  # granian.rsgi re-exports it, untyped
from granian.rsgi import Scope
from starlette.types import ASGIApp, Message

from tidegate.problems import Problem

Headers = list[tuple[str, str]]


def address(text: str) -> tuple[str, int] | None:
    """ASGI's `(host, port)` of RSGI's "host:port" (IPv6 hosts keep their colons)."""
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


async def read_body(proto: HTTPProtocol, declared: str | None, framing: str | None, limit: int) -> bytes:
    """A request's body, at most `limit` bytes (else Problem 413): `declared` its Content-Length, `framing` its
    Transfer-Encoding. With a length and no transfer coding the server reads exactly that many bytes, in one await;
    otherwise the body is counted as it comes, so an endless one is refused at the limit, not held in memory."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
    if declared is not None and framing is None:
        return await proto()
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def serve_asgi(app: ASGIApp, scope: Scope, proto: HTTPProtocol, *, max_body_bytes: int) -> None:
    """Answers one RSGI request with `app` (ASGI 3). A body over `max_body_bytes` is answered 413."""
    headers_in = scope.headers
    try:
        body = await read_body(
            proto, headers_in.get("content-length"), headers_in.get("transfer-encoding"), max_body_bytes
        )
    except Problem as problem:
        # Refused before the whole body was read: Granian closes the connection after the answer, which says so.
        head = [("content-type", "application/problem+json"), ("connection", "close")]
        proto.response_bytes(problem.status, head, problem.body())
        return
    asgi_scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        # Granian gives the path percent-decoded already.
        "path": scope.path,
        "raw_path": quote(scope.path).encode(),
        "query_string": scope.query_string.encode(),
        "root_path": "",
        "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in scope.headers.items()],
        "client": address(scope.client),
        "server": address(scope.server),
    }
    delivered = False
    status = 500
    headers: Headers = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await proto.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message["headers"]]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(asgi_scope, receive, send)
    finally:
        # Also when the app raised after sending its own answer (Starlette's 500 for an endpoint's error).
        proto.response_bytes(status, headers, b"".join(chunks))
