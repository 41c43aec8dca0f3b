"""Quarantine: what tidegate refuses is kept, as received, on the dead-letter topic, for investigation.

A rejected record (a JSON array's element, an NDJSON line, a CBOR item, a batch's reading) or a body refused as a
whole (malformed, an unsupported type or encoding, too large once decoded, telemetry for another device) becomes
one dead-letter record: value its bytes as received, key the device, headers `dlq-reason` (what the client's
problem+json says), `dlq-stage` (`decode`, `contract`, `auth`, or MQTT's `route`), `dlq-source` (`http`,
`mqtt`), `dlq-id`, `content-type`, ... It goes through the spool with the request's accepted records, so it is
durable before the answer, and the delivery process sends it to `kafka_topic_dead_letter` like any record. HTTP
and MQTT share this path: the native gateway builds and spools the records (`tidegate._native.Gateway.accept`,
and `Gateway.quarantine` for MQTT's messages refused before any route; the core's `gateway` and `quarantine`).

Bounded per device: each item costs its bytes plus 256 (the core's `gateway::accept::ITEM_OVERHEAD`) from the
device's quarantine budget (a token bucket in bytes, `quarantine_device_bytes_per_s` up to
`quarantine_device_burst_bytes`, in a memory-mapped table shared by the host's workers). Past the budget an item is
counted in `tidegate_quarantine_dropped_total` and not stored; the client's answer is the same either way. Requests
refused before their body is read (no or an unknown key, a bad header, shed, over the device's rate) are not
quarantined: without a key there is no device to charge, so anyone could fill the spool, and a request refused on its
headers has nothing to investigate.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The response header giving how many of the request's rejected items were quarantined.
QUARANTINED_HEADER = "X-Tidegate-Quarantined"


@dataclass(frozen=True)
class Source:
    """Where a body came from, as its quarantined items say."""

    name: str = "http"
    headers: tuple[tuple[str, bytes], ...] = ()
    """Added to each quarantined item (MQTT's `mqtt-topic`)."""
    undecodable_retried: bool = False
    """A malformed body will be tried another way (MQTT's JSON that may be NDJSON): not kept yet."""


HTTP = Source()
