"""Idempotency keys (`X-Idempotency-Key`, a batch's `batch_id`) belong to one device and one kind of key: no two
devices, and no header key and batch_id, can ever share a scope. Real server over a socket."""

from __future__ import annotations

from pathlib import Path

import httpx
from tidegate.testing.server import Server

from tests.conftest import iso_now, reading


def test_scopes_of_different_devices_and_kinds_never_collide(tmp_path: Path) -> None:
    with Server(tmp_path, {"TIDEGATE_AUTH": "false"}) as server, httpx.Client(base_url=server.url) as http:
        # Device "ingest" sends batch_id K1; device "batch" sends X-Idempotency-Key K1 to the "ingest" route: the
        # old scopes were "batch:ingest" and "batch:ingest", and the second was answered duplicate and dropped.
        batch = {"device_id": "ingest", "batch_id": "K1", "readings": [{"timestamp": iso_now(), "metrics": {"t": 1}}]}
        first = http.post("/api/v1/ingest/batch", json=batch)
        assert first.status_code == 202 and first.json()["accepted"] == 1
        single = http.post(
            "/api/v1/ingest", json=reading("batch", metrics={"t": 2}), headers={"X-Idempotency-Key": "K1"}
        )
        assert single.status_code == 202
        assert single.json()["status"] == "accepted"
        # The same key again from the same device and route is a duplicate, as it should be.
        again = http.post(
            "/api/v1/ingest", json=reading("batch", metrics={"t": 3}), headers={"X-Idempotency-Key": "K1"}
        )
        assert again.json()["status"] == "duplicate"
        # And another device may use the same key.
        other = http.post(
            "/api/v1/ingest", json=reading("other", metrics={"t": 4}), headers={"X-Idempotency-Key": "K1"}
        )
        assert other.json()["status"] == "accepted"
