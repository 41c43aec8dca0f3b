"""Child process for the SIGKILL test: writes telemetry through SpoolWriter until killed.

    python tests/spool_writer_proc.py SPOOL_DIR [BOOTSTRAP]

Several concurrent writers each write small NDJSON bodies; as soon as ``SpoolWriter.write()`` returns (the records
is durable), the writer prints ``ACK <end_seq> <event_id> ...`` on one line, flushed. With BOOTSTRAP a Forwarder
drains the spool to that broker meanwhile. ``READY`` is printed once writing begins.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import tidegate
from tidegate.delivery.kafka import Forwarder, KafkaSettings
from tidegate.delivery.spool import SpoolWriter

WRITERS = 8
PER_BODY = 20


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


async def main(spool_dir: str, bootstrap: str | None) -> None:
    spool = tidegate.Spool(spool_dir, segment_bytes=256 * 1024)  # small segments: kills land on rollovers too
    writer = SpoolWriter(spool)
    await writer.start()
    forwarder = None
    if bootstrap:
        settings = KafkaSettings(bootstrap, send_deadline_s=2.0, request_timeout_ms=3000, linger_idle_s=0.005)
        forwarder = Forwarder(spool, settings)
        await forwarder.start()
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    base_ms = int(time.time() * 1000) - 3_600_000
    out = sys.stdout

    async def write_loop(index: int) -> None:
        n = 0
        while True:
            lines = []
            for _ in range(PER_BODY):
                reading = {
                    "device_id": f"proc-{index}",
                    "timestamp": _iso(base_ms + n),
                    "metrics": {"temperature": 20.0, "sequence": n},
                }
                lines.append(json.dumps(reading))
                n += 1
            records = validator.validate("\n".join(lines).encode(), "application/x-ndjson").records
            ids = records.event_ids("telemetry-raw")
            end = await writer.write(records)
            out.write(f"ACK {end} {' '.join(ids)}\n")
            out.flush()
            if forwarder is not None:
                forwarder.notify()
            await asyncio.sleep(0)

    out.write("READY\n")
    out.flush()
    await asyncio.gather(*(write_loop(i) for i in range(WRITERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
