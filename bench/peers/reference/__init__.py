"""The reference service that seed 001 describes in section 7 ("End-to-End Implementation"), written from the seed.

FastAPI + Pydantic + aiokafka, laid out as the seed's project structure (`main.py`, `models.py`, `auth.py`,
`rate_limiter.py`, `queue.py`, `health.py`) and served by Granian exactly as tidegate is
(`python -m bench.peers.serve bench.peers.reference.main:app`). What the seed leaves out is filled in as plainly
as the seed's own snippets suggest:

- `models.py`: `TelemetryPayload` as section 3 defines it (device id pattern, non-empty metrics, metadata, the
  timestamp window), `TelemetryReading` / `BatchPayload` as section 2, `validate_metric_ranges` as section 3.
  The seed compares the (aware) timestamp with the naive `datetime.utcnow()`, which raises `TypeError` on every
  request; here both sides are aware UTC. Its Pydantic v1 `@validator` is spelled `field_validator` (v2).
- `auth.py`: `verify_device` checks the token against an in-memory dict, loaded from the JSON file named by
  `REFERENCE_DEVICE_TOKENS` (`{"device_id": "token", ...}`).
- `rate_limiter.py`: the seed's in-memory sliding window (section 4), 10 requests per second per device as the
  seed has it. `REFERENCE_RATE_LIMIT` overrides the limit: the benchmarks set it to 1e9 so that the limiter
  still runs on every request but never refuses one (tidegate's own limit is lifted the same way).
- `queue.py`: `QueueProducer` over aiokafka. `send` is aiokafka's `send`: the record is enqueued in the
  Kafka producer's batch and the request is answered without waiting for the broker ("accept fast, process later").
  The broker is `REFERENCE_KAFKA` (the seed's `kafka:9092` by default). tidegate, for comparison, answers only
  once the records are fsynced to its spool.
"""
