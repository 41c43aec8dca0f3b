"""The archive (seed 004): real server, real delivery process, real Parquet files and DuckDB queries; the bucket
path against a real S3-compatible server (moto_server)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import tidegate
from tidegate.archive import DUPLICATES_TOPIC, archive_keys
from tidegate.archive.compaction import visible
from tidegate.archive.query import ArchiveQuery
from tidegate.archive.store import ROW_GROUP_ROWS, ArchiveStore
from tidegate.archive.writer import READ_CHUNK, SpoolArchiver
from tidegate.config import load_settings
from tidegate.delivery.spool import read_archived
from tidegate.delivery.status import running_delivery_pid
from tidegate.testing.processes import free_port
from tidegate.testing.server import Server

from tests.conftest import event, iso_now, metric, reading, wait_for
from tests.openapi_check import OpenApiChecker

NDJSON = {"Content-Type": "application/x-ndjson"}
FAST = {"TIDEGATE_ARCHIVE_FLUSH_INTERVAL_S": "0.1", "TIDEGATE_RATE_PER_DEVICE": "0"}


def local_query(data_dir: Path) -> ArchiveQuery:
    return ArchiveQuery(ArchiveStore.from_settings(load_settings(data_dir=data_dir)))


def wait_archived(query: ArchiveQuery, count: int, timeout: float = 30.0) -> int:
    """Polls until the archive holds at least `count` rows (or `timeout` passed); returns the rows it holds."""
    deadline = time.monotonic() + timeout
    while True:
        held = query.count()
        if held >= count or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def spool_bytes(data_dir: Path) -> int:
    """The bytes in w0's segments. The worker's cleanup may delete a segment between the listing and its stat (CI saw
    it once): a segment gone counts as nothing, which is what it holds."""
    held = 0
    for path in (data_dir / "spool" / "w0").glob("*.seg"):
        with contextlib.suppress(FileNotFoundError):
            held += path.stat().st_size
    return held


def operator_key(data_dir: Path, name: str = "alice") -> str:
    command = [sys.executable, "-m", "tidegate", "keys", "add-operator", "--data-dir", str(data_dir), name]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1]


def investigate(data_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tidegate", "investigate", "--data-dir", str(data_dir), *arguments]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------------------- the writer


def spool_with(directory: Path, bodies: list[tuple[str, bytes, str]], now_ms: int) -> list[tidegate.ValidationResult]:
    """A worker's spool holding `bodies` ((contract, NDJSON, source)) as the ingest edge spools them: accepted
    records, then duplicate occurrences on their own topic."""
    spool = tidegate.Spool(directory, segment_bytes=4096)
    validators = {"event": tidegate.Validator(tidegate.Contract.event())}
    validators["telemetry"] = tidegate.Validator(tidegate.Contract.telemetry(), max_past_seconds=10 * 365 * 86400)
    dedup = tidegate.DedupWindow()
    results = []
    for contract, body, source in bodies:
        result = validators[contract].validate(body, "application/x-ndjson", source=source, received_at_ms=now_ms)
        occurrences = tidegate.Records()
        dedup.claim_records(result.records, now_ms, duplicates=occurrences, duplicates_topic=DUPLICATES_TOPIC)
        spool.append(occurrences)
        spool.append(result.records)
        results.append(result)
    spool.commit()
    return results


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records)


def rows(store: ArchiveStore) -> list[dict[str, Any]]:
    found = []
    for relative in store.files():
        table = pq.read_table(store.path(relative), partitioning=None)
        directory = relative.rsplit("/", 1)[0]
        found += [row | {"directory": directory} for row in table.to_pylist()]
    return found


def test_rows_land_where_their_answer_said_with_their_metadata(tmp_path: Path) -> None:
    """The archive key an answer carries (computed at ingest) is the directory and event id of the row the writer
    makes from the spooled record: late, future-dated and just-before-midnight records included."""
    now_ms = 1_796_169_599_999  # 2026-12-01T23:59:59.999Z: the next millisecond is another ingest date
    bodies = [
        ("event", ndjson([event(), event(entity_id="u2", event_time="2025-12-28T23:59:59.999Z")]), "http"),
        ("event", ndjson([event()]), "mqtt"),  # the same event again, over MQTT: a duplicate occurrence
        ("telemetry", ndjson([reading("dev-1", timestamp="2026-12-01T23:59:59.999Z")]), "http"),
    ]
    results = spool_with(tmp_path / "w0", bodies, now_ms)
    store = ArchiveStore(str(tmp_path / "archive"), pafs.LocalFileSystem(), local=True)
    archiver = SpoolArchiver(tidegate.Spool.open_for_delivery(tmp_path / "w0"), store, "atest", skip_topics=frozenset())
    archiver.resume()
    assert archiver.step() == 4
    archived = rows(store)
    by_key = {row["archive_key"]: row for row in archived}
    assert len(by_key) == 4 == len(archived)
    for (contract, _, source), result in zip(bodies, results, strict=True):
        event_type = "telemetry" if contract == "telemetry" else "event"
        for key in archive_keys(source, event_type, now_ms, result.ingest_lag_ms, result.event_ids):
            assert key is not None and key in by_key, key
            assert by_key[key]["directory"] == key.rsplit("/", 1)[0]
    duplicate = next(row for row in archived if row["status"] == "DUPLICATE")
    assert duplicate["event_id"] == results[0].event_ids[0]
    assert duplicate["archive_key"].startswith("raw/source=mqtt/event_type=event/event_date=2025-12-28/")
    accepted = next(row for row in archived if row["event_id"] == results[0].event_ids[0] and row is not duplicate)
    assert accepted["status"] == "ACCEPTED" and accepted["entity_id"] == "user_123"
    assert accepted["event_time"].isoformat() == "2025-12-28T23:59:59+00:00"
    assert accepted["ingest_time"].isoformat() == "2026-12-01T23:59:59.999000+00:00"
    assert accepted["ingest_lag_ms"] == results[0].ingest_lag_ms[0]
    assert json.loads(accepted["value"])["payload"] == {"steps": 10}
    assert accepted["payload_blake3"] == blake3.blake3(accepted["value"].encode()).hexdigest()
    assert json.loads(accepted["headers"])["source"] == "http"


def test_a_restarted_writer_finishes_an_interrupted_range_without_writing_a_row_twice(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    sources = ["http", "mqtt", "http"]
    bodies = [("event", ndjson([event(entity_id=f"e{i}-{j}") for j in range(5)]), s) for i, s in enumerate(sources)]
    spool_with(tmp_path / "w0", bodies, now_ms)
    store = ArchiveStore(str(tmp_path / "archive"), pafs.LocalFileSystem(), local=True)

    def archiver() -> SpoolArchiver:
        spool = tidegate.Spool.open_for_delivery(tmp_path / "w0")
        return SpoolArchiver(spool, store, "atest", skip_topics=frozenset(), max_records=8)

    first = archiver()
    first.resume()
    first.step()  # records 0..8: http and mqtt, two files
    first.step()  # records 8..15: mqtt and http, two files
    files = store.files()
    assert len(files) == 4
    # A crash after the first file of the last range and before its second: as if the second was never renamed.
    last_range = [f for f in files if "-00000000000000000008-00000000000000000015-" in f]
    assert len(last_range) == 2
    os.unlink(store.path(next(f for f in last_range if f.endswith("-1of2.parquet"))))
    second = archiver()
    second.resume()
    assert second.cursor == 15
    assert second.step() == 0  # nothing after the cursor
    archived = rows(store)
    assert len(archived) == 15
    assert len({row["entity_id"] for row in archived}) == 15, "no row twice"


def test_a_range_read_in_chunks_makes_one_file_sorted_across_its_row_groups(tmp_path: Path) -> None:
    """A range larger than one spool read (`READ_CHUNK`) and than one row group: one file per partition as
    before, every record once, rows sorted by event id across row groups (so a lookup skips all but one)."""
    count = 2 * READ_CHUNK + 1000
    records = [event(entity_id=f"c{i}", payload={"i": i}) for i in range(count)]
    bodies = [("event", ndjson(records[i : i + 5000]), "http") for i in range(0, count, 5000)]
    results = spool_with(tmp_path / "w0", bodies, int(time.time() * 1000))
    store = ArchiveStore(str(tmp_path / "archive"), pafs.LocalFileSystem(), local=True)
    archiver = SpoolArchiver(tidegate.Spool.open_for_delivery(tmp_path / "w0"), store, "atest", skip_topics=frozenset())
    archiver.resume()
    assert archiver.step() == count
    (relative,) = store.files()
    parquet = pq.ParquetFile(store.path(relative))
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [
        ROW_GROUP_ROWS, ROW_GROUP_ROWS, count - 2 * ROW_GROUP_ROWS
    ]  # fmt: skip
    ids = parquet.read(columns=["event_id"]).column("event_id").to_pylist()
    assert ids == sorted(ids)
    assert sorted(ids) == sorted(e for result in results for e in result.event_ids if e is not None)
    bounds = [parquet.metadata.row_group(i).column(0).statistics for i in range(parquet.num_row_groups)]
    assert all(a.max < b.min for a, b in itertools.pairwise(bounds)), "row groups do not overlap"


def archive_all(tmp_path: Path, *, compact_min_files: int) -> tuple[ArchiveStore, SpoolArchiver]:
    """The spool `tmp_path/w0` archived under `tmp_path/archive` by writer `atest`, 4 records a range, and its
    archiver (compacting runs of at least `compact_min_files` small files)."""
    store = ArchiveStore(str(tmp_path / "archive"), pafs.LocalFileSystem(), local=True)
    spool = tidegate.Spool.open_for_delivery(tmp_path / "w0")
    archiver = SpoolArchiver(
        spool, store, "atest", skip_topics=frozenset(), max_records=4, compact_min_files=compact_min_files
    )
    archiver.resume()
    while archiver.step():
        pass
    return store, archiver


def test_compaction_adds_one_file_per_finished_partition_and_queries_count_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files of a finished hour are copied into one compacted file, sorted by event id across its row groups;
    none is deleted or overwritten, readers skip the ones it supersedes, and files written later (or of a range not
    finished) stay visible."""
    from tidegate.archive import compaction  # noqa: PLC0415

    now_ms = int(time.time() * 1000)
    bodies = [("event", ndjson([event(entity_id=f"k{i}-{j}") for j in range(5)]), "http") for i in range(6)]
    results = spool_with(tmp_path / "w0", bodies, now_ms)
    ids = [e for result in results for e in result.event_ids if e is not None]
    store = ArchiveStore(str(tmp_path / "archive"), pafs.LocalFileSystem(), local=True)

    def archiver() -> SpoolArchiver:
        spool = tidegate.Spool.open_for_delivery(tmp_path / "w0")
        return SpoolArchiver(spool, store, "atest", skip_topics=frozenset(), max_records=4, compact_min_files=3)

    first = archiver()
    first.resume()
    while first.step():
        pass
    small = store.files()
    assert len(small) == 8 and first.cursor == 30
    query = ArchiveQuery(store)
    assert first.compact(now_ms) == [], "the hour is not over"
    later = now_ms + 2 * 3_600_000
    # Only ranges below the cursor count: as if the writer had not finished the last ones yet.
    first.cursor = 12
    (compacted,) = first.compact(later)
    assert compacted.endswith("/c-atest-w0-00000000000000000000-00000000000000000012.parquet")
    assert set(small) < set(store.files()), "every small file is still there"
    assert query.count() == 30
    first.cursor = 30
    # Row groups of 4 rows: the 18 rows are sorted and written a row group at a time.
    monkeypatch.setattr(compaction, "ROW_GROUP_ROWS", 4)
    (second,) = first.compact(later)
    assert second.endswith("-00000000000000000012-00000000000000000030.parquet")
    assert first.compact(later) == [], "nothing left to compact"
    assert sorted(visible(store.files())) == sorted([compacted, second])
    assert query.count() == 30 and query.events(entity_id="k5-4")["count"] == 1
    table = pq.read_table(store.path(second), partitioning=None)
    assert table.column("event_id").to_pylist() == sorted(ids[12:])
    parquet = pq.ParquetFile(store.path(second))
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [4, 4, 4, 4, 2]
    for event_id in ids[::7]:
        found = query.event(event_id)
        assert found is not None and len(found["occurrences"]) == 1, "once, not also from its small file"
    # A restarted writer goes on from its own small files, and does not compact twice.
    again = archiver()
    again.resume()
    assert again.cursor == 30 and again.compact(later) == []


def test_compaction_never_hides_a_file_it_did_not_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that is not small (here: one holding a large record) cuts the run of small files around it: each
    compacted file's range holds only its own sources, so the large file stays visible and no row is hidden."""
    from tidegate.archive import compaction  # noqa: PLC0415

    now_ms = int(time.time() * 1000)
    records = [event(entity_id=f"r{i}", payload={"i": i}) for i in range(30)]
    records[13] = event(entity_id="r13", payload={"noise": os.urandom(16_000).hex()})
    results = spool_with(tmp_path / "w0", [("event", ndjson(records), "http")], now_ms)
    ids = [e for e in results[0].event_ids if e is not None]
    store, archiver = archive_all(tmp_path, compact_min_files=2)
    sizes = dict(store.listing())
    large = next(f for f in sizes if "-00000000000000000012-00000000000000000016-" in f)
    assert sizes[large] > 3 * max(size for f, size in sizes.items() if f != large)
    monkeypatch.setattr(compaction, "SMALL_FILE_BYTES", sizes[large] - 1)
    written = archiver.compact(now_ms + 2 * 3_600_000)
    assert [w.rsplit("/", 1)[1] for w in written] == [
        "c-atest-w0-00000000000000000000-00000000000000000012.parquet",
        "c-atest-w0-00000000000000000016-00000000000000000030.parquet",
    ]
    assert large in visible(store.files())
    query = ArchiveQuery(store)
    assert query.count() == 30
    assert query.event(ids[13]) is not None


def test_a_compaction_that_fails_in_its_process_says_why_and_leaves_the_small_files(tmp_path: Path) -> None:
    """Compaction runs in a process of its own (`compact_apart`): its error comes back to the writer as one
    message, the archiver counts nothing compacted, and the small files stay what readers read."""
    from tidegate.archive.compaction import compact_apart, plan  # noqa: PLC0415

    now_ms = int(time.time() * 1000)
    bodies = [("event", ndjson([event(entity_id=f"f{i}-{j}") for j in range(4)]), "http") for i in range(4)]
    spool_with(tmp_path / "w0", bodies, now_ms)
    store, archiver = archive_all(tmp_path, compact_min_files=2)
    job = plan(store, "atest", "w0", archiver.cursor, before_ms=now_ms + 2 * 3_600_000, min_files=2)
    assert job is not None and len(job.runs) == 1
    (_, run) = job.runs[0]
    gone = run[1][2]
    os.rename(store.path(gone), store.path(gone) + ".aside")
    with pytest.raises(RuntimeError, match=r"compaction failed \(exit 1\): FileNotFoundError"):
        compact_apart(job)
    os.rename(store.path(gone) + ".aside", store.path(gone))
    assert not any(name.rsplit("/", 1)[1].startswith("c-") for name in store.files())
    assert ArchiveQuery(store).count() == 16
    (written,) = compact_apart(job)
    assert written in visible(store.files()) and ArchiveQuery(store).count() == 16


# ---------------------------------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    server = Server(tmp_path_factory.mktemp("archive"), FAST)
    keys = server.keys("dev-1", "dev-2")
    keys["operator"] = operator_key(server.data_dir)
    with server:
        yield server, keys


@pytest.fixture(scope="module")
def openapi(served: tuple[Server, dict[str, str]]) -> OpenApiChecker:
    return OpenApiChecker(httpx.get(served[0].url + "/openapi.json").json())


@pytest.fixture
def http(served: tuple[Server, dict[str, str]], openapi: OpenApiChecker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, timeout=30, event_hooks={"response": [openapi.check]}) as client:
        yield client
    assert openapi.violations == []


def test_accepted_and_duplicate_records_are_archived_and_found(
    served: tuple[Server, dict[str, str]], http: httpx.Client
) -> None:
    server, keys = served
    device = {"X-Device-Token": keys["dev-1"]}
    operator = {"Authorization": f"Bearer {keys['operator']}"}
    the_event = event(entity_id="door-7", payload={"opened": True})
    first = http.post("/api/v1/events", json=the_event, headers=device)
    assert first.status_code == 202 and first.json()["status"] == "ACCEPTED"
    event_id, key = first.json()["event_id"], first.json()["archive_key"]
    assert key.startswith("raw/source=http/event_type=event/event_date=2025-12-28/")
    assert key.endswith(f"/event_id={event_id}")
    again = http.post("/api/v1/events", json=[the_event, the_event], headers=device)
    assert [r["status"] for r in again.json()["results"]] == ["DUPLICATE", "DUPLICATE"]
    single = http.post("/api/v1/ingest", json=reading("dev-1"), headers=device)
    assert single.json()["archive_key"].startswith("raw/source=http/event_type=telemetry/")
    batch = {"device_id": "dev-1", "batch_id": "b-archive", "readings": [{"timestamp": iso_now(), "metrics": {"t": 1}}]}
    assert http.post("/api/v1/ingest/batch", json=batch, headers=device).json()["status"] == "accepted"
    repeat = http.post("/api/v1/ingest/batch", json=batch, headers=device).json()  # a whole-request duplicate
    assert repeat["status"] == "duplicate" and repeat["results"][0]["archive_key"].startswith("raw/source=http/")

    query = local_query(server.data_dir)
    assert wait_archived(query, 6) >= 6
    found = http.get(f"/api/v1/events/{event_id}", headers=operator)
    assert found.status_code == 200
    answer = found.json()
    assert answer["record"]["payload"] == {"opened": True} and answer["metadata"]["entity_id"] == "door-7"
    assert [o["status"] for o in answer["occurrences"]] == ["ACCEPTED", "DUPLICATE", "DUPLICATE"]
    assert answer["duplicates"] == 2
    assert answer["occurrences"][0]["archive_key"] == key
    assert answer["metadata"]["source"] == "http" and answer["metadata"]["event_type"] == "event"
    # The key names the directory the row is in.
    directory = server.data_dir / "archive" / key.rsplit("/", 1)[0]
    assert any(
        event_id in pq.read_table(path, partitioning=None).column("event_id").to_pylist()
        for path in directory.glob("*.parquet")
    )
    repeated = http.get(f"/api/v1/events/{repeat['results'][0]['event_id']}", headers=operator).json()
    assert [o["status"] for o in repeated["occurrences"]] == ["ACCEPTED", "DUPLICATE"]

    cli = investigate(server.data_dir, "--json", "event", event_id)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["occurrences"] == answer["occurrences"]
    table = investigate(server.data_dir, "event", event_id)
    assert table.returncode == 0 and "occurrences (3, 2 duplicate)" in table.stdout and "DUPLICATE" in table.stdout


def test_queries_by_entity_late_arrivals_and_hours(served: tuple[Server, dict[str, str]], http: httpx.Client) -> None:
    server, keys = served
    device = {"X-Device-Token": keys["dev-2"]}
    operator = {"X-Operator-Key": keys["operator"]}
    late = [event(entity_id="pump-3", event_time=f"2026-01-0{day}T12:00:00Z", payload={"day": day}) for day in (1, 2)]
    fresh = [event(entity_id="pump-3", event_time=iso_now(-1), payload={"i": i}) for i in range(3)]
    response = http.post("/api/v1/events", content=ndjson(late + fresh), headers=device | NDJSON)
    assert response.status_code == 202 and response.json()["accepted"] == 5
    query = local_query(server.data_dir)
    deadline = time.monotonic() + 30
    while query.events(entity_id="pump-3")["count"] < 5 and time.monotonic() < deadline:
        time.sleep(0.1)

    pages, cursor = [], None
    while True:
        params = {"entity_id": "pump-3", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = http.get("/api/v1/events", params=params, headers=operator).json()
        pages.append(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    listed = [row for page in pages for row in page]
    assert len(pages) == 3 and len(listed) == 5
    assert [row["record"]["payload"] for row in listed[:2]] == [{"day": 1}, {"day": 2}], "event-time order"
    window = {"entity_id": "pump-3", "from": "2026-01-02", "to": "2026-01-03T00:00:00+00:00"}
    assert [
        r["record"]["payload"] for r in http.get("/api/v1/events", params=window, headers=operator).json()["events"]
    ] == [{"day": 2}]
    by_type = http.get("/api/v1/events", params={"entity_id": "pump-3", "event_type": "telemetry"}, headers=operator)
    assert by_type.json()["count"] == 0

    lag_bound = 24 * 3600 * 1000
    arrivals = http.get("/api/v1/events/late", params={"min_lag_ms": str(lag_bound)}, headers=operator).json()
    pump = [row for row in arrivals["events"] if row["entity_id"] == "pump-3"]
    assert [row["event_time"][:10] for row in pump] == ["2026-01-01", "2026-01-02"], "the latest arrival first"
    assert all(row["ingest_lag_ms"] > lag_bound for row in arrivals["events"])

    hours = http.get("/api/v1/events/hourly", params={"source": "http"}, headers=operator).json()["hours"]
    assert sum(h["accepted"] for h in hours if h["event_type"] == "event") >= 5
    cli = investigate(server.data_dir, "events", "--entity-id", "pump-3", "--limit", "3")
    assert cli.returncode == 0 and "pump-3" in cli.stdout and "more: --cursor" in cli.stdout
    assert investigate(server.data_dir, "hourly").returncode == 0
    assert investigate(server.data_dir, "late", "--min-lag-ms", str(lag_bound)).stdout.count("pump-3") == 2


def test_the_archive_is_read_with_an_operator_key_only(
    served: tuple[Server, dict[str, str]], http: httpx.Client
) -> None:
    _, keys = served
    some_id = "0" * 32
    for path in (f"/api/v1/events/{some_id}", "/api/v1/events?entity_id=x", "/api/v1/events/late"):
        missing = http.get(path)
        assert missing.status_code == 401 and missing.headers["content-type"] == "application/problem+json"
        assert http.get(path, headers={"Authorization": "Bearer tg_nope_nope"}).status_code == 401
        forbidden = http.get(path, headers={"Authorization": f"Bearer {keys['dev-1']}"})
        assert forbidden.status_code == 403 and forbidden.headers["content-type"] == "application/problem+json"
    operator = {"Authorization": f"Bearer {keys['operator']}"}
    assert http.get(f"/api/v1/events/{some_id}", headers=operator).status_code == 404
    bad = http.get("/api/v1/events/not-an-id", headers=operator)
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "query:event_id"
    assert http.get("/api/v1/events", params={"from": "yesterday"}, headers=operator).status_code == 400
    assert http.get("/api/v1/events", params={"cursor": "bogus"}, headers=operator).status_code == 400
    assert http.get("/api/v1/events", params={"limit": "0"}, headers=operator).status_code == 400
    # An operator's key sends nothing.
    refused = http.post("/api/v1/events", json=event(), headers={"X-Device-Token": keys["operator"]})
    assert refused.status_code == 401


# ------------------------------------------------------------------------------------------- durability path


def test_without_kafka_archived_segments_are_deleted_and_the_spool_never_fills(tmp_path: Path) -> None:
    """The embedded default (no Kafka): segments are deleted once archived, so the spool takes more than its quota
    over time. (Before the archive, nothing ever deleted them there: the spool filled and answered 503.)"""
    env = FAST | {
        "TIDEGATE_AUTH": "false",
        "TIDEGATE_SPOOL_QUOTA_BYTES": str(256 * 1024),
        "TIDEGATE_SPOOL_SEGMENT_BYTES": str(16 * 1024),
        "TIDEGATE_SPOOL_RETENTION_SECONDS": "0",
    }
    with Server(tmp_path / "server", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        query = local_query(server.data_dir)
        sent = 0
        for round_ in range(12):  # ~60 KiB of spool a round: 720 KiB in all, almost 3x the quota
            body = ndjson([event(entity_id=f"r{round_}-{i}", payload={"pad": "x" * 200}) for i in range(120)])
            response = http.post("/api/v1/events", content=body, headers=NDJSON)
            assert response.status_code == 202, response.text
            sent += 120
            assert wait_archived(query, sent) == sent
            # Once past half the quota, the worker's cleanup (about once a second) deletes what the archive has.
            deadline = time.monotonic() + 30
            while spool_bytes(server.data_dir) > 144 * 1024 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert spool_bytes(server.data_dir) <= 144 * 1024, "archived segments were not deleted"
    assert local_query(server.data_dir).count() == sent


def test_archived_segments_are_deleted_from_spools_no_worker_writes(tmp_path: Path) -> None:
    """Spool directories no worker writes any more are cleaned like the others once the archive has their
    records: one a worker left when the workers became fewer (here w1, written while w0 was another's), and a
    worker's high-priority one once `high_priority_spool` is off (w0h). Before, their segments stayed for good."""
    env = FAST | {
        "TIDEGATE_AUTH": "false",
        "TIDEGATE_SPOOL_SEGMENT_BYTES": str(16 * 1024),
        "TIDEGATE_SPOOL_RETENTION_SECONDS": "0",
    }
    data = tmp_path / "server"
    sent = 0

    def fill(server: Server) -> None:
        nonlocal sent
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for round_ in range(8):  # each body about 24 KiB: a segment or more in each spool
                body = ndjson([event(entity_id=f"s{sent}-{i}", payload={"pad": "x" * 200}) for i in range(60)])
                priority = {"X-Priority": "high" if round_ % 2 else "low"}
                assert http.post("/api/v1/events", content=body, headers=NDJSON | priority).status_code == 202
                sent += 60
        assert wait_archived(local_query(data), sent) == sent

    with Server(data, env) as server:
        fill(server)
    # Another worker holds w0: this server's worker writes w1 and w1h.
    with (data / "spool" / "w0" / "lock").open("a") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with Server(data, env) as server:
            fill(server)
    left = [data / "spool" / name for name in ("w0h", "w1", "w1h")]
    assert all(len(list(directory.glob("*.seg"))) > 1 for directory in left)
    with Server(data, env | {"TIDEGATE_HIGH_PRIORITY_SPOOL": "false"}):
        # The last segment of a spool stays (cleanup never deletes it); every archived one before it goes.
        wait_for(
            lambda: all(len(list(directory.glob("*.seg"))) == 1 for directory in left),
            "the archived segments of the spools no worker writes deleted",
        )
    assert local_query(data).count() == sent


def test_segments_are_not_deleted_before_the_archive_has_them(tmp_path: Path) -> None:
    """Cleanup obeys the archive as well as Kafka: with the archive stalled (it writes only when it stops),
    no segment goes, however far Kafka got; every record is archived in the end."""
    from tidegate.testing.broker import Broker  # noqa: PLC0415

    with Broker(tmp_path / "broker") as broker:
        broker.create_topics(["telemetry-raw", "events-raw", "ingest-dlq"], partitions=1)
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_KAFKA": broker.bootstrap,
            "TIDEGATE_ARCHIVE_FLUSH_INTERVAL_S": "3600",
            "TIDEGATE_ARCHIVE_MAX_FILE_RECORDS": "1000000",
            "TIDEGATE_SPOOL_QUOTA_BYTES": str(256 * 1024),
            "TIDEGATE_SPOOL_SEGMENT_BYTES": str(16 * 1024),
            "TIDEGATE_SPOOL_RETENTION_SECONDS": "0",
            # The quota is the main spool's alone: what is written below is past half of it and fits.
            "TIDEGATE_HIGH_PRIORITY_SPOOL": "false",
        }
        server = Server(tmp_path / "server", env)
        with server, httpx.Client(base_url=server.url, timeout=30) as http:
            spool = server.data_dir / "spool" / "w0"
            ids = []
            for round_ in range(6):  # past half the quota: cleanup runs every second from then on
                body = ndjson([event(entity_id=f"r{round_}-{i}", payload={"pad": "x" * 200}) for i in range(60)])
                response = http.post("/api/v1/events", content=body, headers=NDJSON | {"X-Ack": "kafka"})
                assert response.status_code == 202 and response.headers["x-durability"] == "kafka"
                ids += [r["event_id"] for r in response.json()["results"]]
            first_segment = min(spool.glob("*.seg"))

            # Once the worker has seen Kafka acknowledge every record, two more cleanup passes: each would delete
            # every segment Kafka passed, were the archive not obeyed (it has none).
            def cleanup(name: str) -> float:
                return metric(http.get("/metrics").text, f"tidegate_spool_{name}_total")

            wait_for(lambda: metric(http.get("/metrics").text, "tidegate_spool_lag_records") == 0, "Kafka has all")
            passes = cleanup("cleanups")
            wait_for(
                lambda: cleanup("cleanups") >= passes + 2 or cleanup("segments_deleted") > 0,
                "two cleanup passes since (or a segment deleted)",
            )
            assert read_archived(spool) == 0
            assert cleanup("segments_deleted") == 0
            assert first_segment.exists(), "a segment was deleted before the archive had it"
        archived = {
            row["event_id"] for row in rows(ArchiveStore.from_settings(load_settings(data_dir=server.data_dir)))
        }
        assert set(ids) <= archived


def test_killing_the_delivery_process_loses_no_archived_row_and_writes_none_twice(tmp_path: Path) -> None:
    # Every other body is high priority: each worker's two spools are archived, each resuming from its own files.
    env = FAST | {"TIDEGATE_AUTH": "false", "TIDEGATE_ARCHIVE_MAX_FILE_RECORDS": "50"}
    with Server(tmp_path / "server", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        acknowledged = []
        pid = None
        for kill in range(4):
            for i in range(10):
                body = ndjson([event(entity_id=f"k{kill}-{i}-{j}") for j in range(20)])
                priority = {"X-Priority": "high" if i % 2 else "low"}
                response = http.post("/api/v1/events", content=body, headers=NDJSON | priority)
                assert response.status_code == 202
                acknowledged += [r["event_id"] for r in response.json()["results"]]
            pid = running_delivery_pid(server.data_dir, other_than=pid)
            assert pid is not None
            if kill < 3:
                os.kill(pid, signal.SIGKILL)
        query = local_query(server.data_dir)
        assert wait_archived(query, len(acknowledged)) == len(acknowledged)
    archived = [row["event_id"] for row in rows(ArchiveStore.from_settings(load_settings(data_dir=server.data_dir)))]
    assert sorted(archived) == sorted(acknowledged), "every acknowledged record once, none twice"


# ---------------------------------------------------------------------------------------------------- replay


def test_replay_publishes_archived_records_with_their_event_ids_and_a_replay_header(tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415

    from tidegate.testing.broker import Broker, consume_all  # noqa: PLC0415

    with Broker(tmp_path / "broker") as broker:
        broker.create_topics(["telemetry-raw", "events-raw", "ingest-dlq", "replayed"], partitions=2)
        env = FAST | {"TIDEGATE_AUTH": "false", "TIDEGATE_KAFKA": broker.bootstrap}
        with Server(tmp_path / "server", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            records = [event(entity_id=f"v{i}", event_time=f"2026-02-0{1 + i % 3}T10:00:00Z") for i in range(9)]
            first = http.post("/api/v1/events", content=ndjson(records), headers=NDJSON | {"X-Ack": "kafka"}).json()
            again = http.post("/api/v1/events", content=ndjson(records[:2]), headers=NDJSON | {"X-Ack": "kafka"})
            assert again.headers["x-durability"] == "kafka", "duplicate occurrences do not hold up delivery"
            assert wait_archived(local_query(server.data_dir), 11) == 11
            delivered = asyncio.run(consume_all(broker.bootstrap, "events-raw", timeout=10))
            assert sorted(json.loads(r.value)["event_id"] for r in delivered) == sorted(
                r["event_id"] for r in first["results"]
            ), "each record once on its topic"
            leaked = asyncio.run(consume_all(broker.bootstrap, DUPLICATES_TOPIC, timeout=3))
            assert leaked == [], "duplicate occurrences never reach Kafka"
            command = [
                sys.executable, "-m", "tidegate", "replay", "--data-dir", str(server.data_dir),
                "--kafka", broker.bootstrap, "--from", "2026-02-02", "--to", "2026-02-04", "--topic", "replayed",
            ]  # fmt: skip
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "replay [" in done.stderr and "6/6" in done.stderr
        replayed = asyncio.run(consume_all(broker.bootstrap, "replayed", timeout=10))
    wanted = {
        r["event_id"] for r, rec in zip(first["results"], records, strict=True) if rec["event_time"] >= "2026-02-02"
    }
    assert {dict(r.headers)["event_id"].decode() for r in replayed} == wanted
    assert all(dict(r.headers)["replay"].endswith(b"Z") for r in replayed)
    assert {json.loads(r.value)["event_id"] for r in replayed} == wanted


# ---------------------------------------------------------------------------------------------------- a bucket


@contextlib.contextmanager
def moto_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    process = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


def test_the_archive_in_an_s3_compatible_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3  # noqa: PLC0415

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with moto_server(tmp_path) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="evidence")
        settings = load_settings(
            data_dir=tmp_path, archive_url="s3://evidence/tidegate", archive_s3_endpoint=endpoint,
            archive_s3_region="us-east-1",
        )  # fmt: skip
        store = ArchiveStore.from_settings(settings)
        results = spool_with(
            tmp_path / "w0",
            [("event", ndjson([event(entity_id=f"s{i}") for i in range(4)]), "http")],
            int(time.time() * 1000),
        )
        archiver = SpoolArchiver(
            tidegate.Spool.open_for_delivery(tmp_path / "w0"), store, "atest", skip_topics=frozenset()
        )
        archiver.resume()
        assert archiver.step() == 4
        objects = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(Bucket="evidence")
        keys = [o["Key"] for o in objects["Contents"]]
        assert len(keys) == 1 and keys[0].startswith("tidegate/raw/source=http/event_type=event/event_date=2025-12-28/")
        query = ArchiveQuery(store)
        assert query.count() == 4
        wanted = results[0].event_ids[2]
        assert wanted is not None
        found = query.event(wanted)
        assert found is not None and found["metadata"]["entity_id"] == "s2"
        # A restarted writer finds its cursor in the bucket.
        again = SpoolArchiver(
            tidegate.Spool.open_for_delivery(tmp_path / "w0"), store, "atest", skip_topics=frozenset()
        )
        again.resume()
        assert again.cursor == 4 and again.step() == 0


def test_a_bucket_file_larger_than_one_upload_part_goes_up_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parquet file larger than pyarrow's S3 upload part (10 MiB) goes up as a multipart upload: every row is in
    the bucket once, and DuckDB finds them there. (moto 5.2.1 answers CompleteMultipartUpload with the
    wrong root element, `CompleteMultipartUploadResponse`, which pyarrow takes for an error: the upload fails.)"""
    import boto3  # noqa: PLC0415

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with moto_server(tmp_path) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="evidence")
        settings = load_settings(
            data_dir=tmp_path, archive_url="s3://evidence/tidegate", archive_s3_endpoint=endpoint,
            archive_s3_region="us-east-1",
        )  # fmt: skip
        store = ArchiveStore.from_settings(settings)
        # Incompressible payloads (random text): 24,000 records of ~900 bytes make one file of ~14 MB.
        records = [event(entity_id=f"big-{i}", payload={"noise": os.urandom(450).hex()}) for i in range(24_000)]
        bodies = [("event", ndjson(records[i : i + 4000]), "http") for i in range(0, len(records), 4000)]
        results = spool_with(tmp_path / "w0", bodies, int(time.time() * 1000))
        event_ids = [event_id for result in results for event_id in result.event_ids if event_id is not None]
        assert len(event_ids) == len(records)
        archiver = SpoolArchiver(
            tidegate.Spool.open_for_delivery(tmp_path / "w0"), store, "atest", skip_topics=frozenset()
        )
        archiver.resume()
        assert archiver.step() == len(records)
        objects = client.list_objects_v2(Bucket="evidence")["Contents"]
        assert len(objects) == 1 and objects[0]["Size"] > 10 << 20, "one file, larger than a part"
        assert objects[0]["ETag"].strip('"').endswith("-2"), "uploaded in parts"
        table = pq.read_table(store.path(objects[0]["Key"].removeprefix("tidegate/")), filesystem=store.filesystem)
        assert sorted(table.column("event_id").to_pylist()) == sorted(event_ids), "every row, once"
        query = ArchiveQuery(store)
        assert query.count() == len(records)
        found = query.event(event_ids[12_345])
        assert found is not None and found["metadata"]["entity_id"] == "big-12345"
        assert found["record"]["payload"] == records[12_345]["payload"]


# ---------------------------------------------------------------------------------------------------- MQTT


def test_a_record_over_mqtt_is_archived_as_mqtt_and_its_http_repeat_as_a_duplicate(tmp_path: Path) -> None:
    from tidegate.testing.mosquitto import Mosquitto  # noqa: PLC0415

    from tests.test_mqtt import Device, mqtt_env, serving  # noqa: PLC0415

    with Mosquitto(tmp_path / "broker") as broker:
        server = Server(tmp_path / "data", mqtt_env(broker) | FAST)
        keys = server.keys("sensor-001")
        device = Device(broker, "sensor-001")
        with serving(server, broker), httpx.Client(base_url=server.url, timeout=20) as http:
            the_event = event(entity_id="sensor-001", payload={"over": "mqtt"})
            device.publish("devices/sensor-001/events", the_event)
            query = local_query(server.data_dir)
            assert wait_archived(query, 1) == 1
            answer = http.post("/api/v1/events", json=the_event, headers={"X-Device-Token": keys["sensor-001"]})
            assert answer.json()["status"] == "DUPLICATE"
            assert answer.json()["archive_key"].startswith("raw/source=http/event_type=event/")
            assert wait_archived(query, 2) == 2
            found = query.event(answer.json()["event_id"])
            assert found is not None
            occurrences = [(o["status"], o["source"]) for o in found["occurrences"]]
            assert occurrences == [("ACCEPTED", "mqtt"), ("DUPLICATE", "http")]
            # The delivery process's figures reach /metrics through its status file (within a few seconds).
            wait = time.monotonic() + 30

            def archived_metric() -> str:
                text = http.get("/metrics").text
                return next(line for line in text.splitlines() if line.startswith("tidegate_archive_records_archived"))

            while archived_metric() != "tidegate_archive_records_archived 2" and time.monotonic() < wait:
                time.sleep(0.2)
            assert archived_metric() == "tidegate_archive_records_archived 2"
        device.close()


def test_the_service_archives_to_a_bucket_and_answers_from_it(tmp_path: Path) -> None:
    """`tidegate serve` with `archive_url = s3://...`: the delivery process writes the bucket, the HTTP endpoints
    read it, and the spool is cleaned behind it."""
    import boto3  # noqa: PLC0415

    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    with moto_server(tmp_path) as endpoint:
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket="evidence")
        env = FAST | credentials | {
            "TIDEGATE_ARCHIVE_URL": "s3://evidence/tidegate",
            "TIDEGATE_ARCHIVE_S3_ENDPOINT": endpoint,
            "TIDEGATE_ARCHIVE_S3_REGION": "us-east-1",
        }  # fmt: skip
        server = Server(tmp_path / "server", env)
        keys = server.keys("dev-1")
        operator = {"Authorization": f"Bearer {operator_key(server.data_dir)}"}
        with server, httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/api/v1/events", json=event(entity_id="b-1"), headers={"X-Device-Token": keys["dev-1"]})
            event_id = answer.json()["event_id"]
            deadline = time.monotonic() + 30
            found = http.get(f"/api/v1/events/{event_id}", headers=operator)
            while found.status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.2)
                found = http.get(f"/api/v1/events/{event_id}", headers=operator)
            assert found.status_code == 200, found.text
            assert found.json()["occurrences"][0]["archive_key"] == answer.json()["archive_key"]
            # The archived cursor is published after the object is uploaded, so a lookup may find it first.
            wait_for(lambda: read_archived(server.data_dir / "spool" / "w0") == 1, "the archived cursor")
        assert not (server.data_dir / "archive").exists(), "nothing archived locally"
