"""The `tidegate` command: serve, deliver, keys, tail, spool stats, investigate, replay, chaos, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from tidegate import mqtt
from tidegate._native import Spool
from tidegate.archive import DUPLICATES_TOPIC
from tidegate.archive.query import ArchiveQuery, InvalidQuery, parse_time
from tidegate.archive.render import render_answer
from tidegate.archive.replay import replay
from tidegate.archive.store import ArchiveStore
from tidegate.auth import KeyStore
from tidegate.config import SETTING_NAMES, Settings, choices_of, load_settings, parse_intervals, to_env
from tidegate.delivery.kafka import kafka_settings
from tidegate.delivery.process import DeliverySupervisor, run_delivery, supervise
from tidegate.delivery.spool import read_archived, worker_spool_dirs
from tidegate.instance import StartRefused, check_address_free, hold_instance_lock

#: Settings with a flag of their own name (`kafka_tls_ca_file`: `--kafka-tls-ca-file`). Not the SASL password:
#: flags show in `ps`, so it comes from the TOML file or the environment.
KAFKA_FLAGS = tuple(
    name
    for name in SETTING_NAMES
    if (name.startswith("kafka_") or name == "ready_requires_kafka") and name != "kafka_sasl_password"
)

#: The MQTT source's settings, each with a flag of its own name (`--mqtt-topic-telemetry`); not the password.
MQTT_FLAGS = tuple(name for name in SETTING_NAMES if name.startswith("mqtt_") and name != "mqtt_password")


def _metavar(name: str) -> str:
    for suffix, metavar in (("_file", "FILE"), ("_ms", "MS"), ("_s", "SECONDS"), ("_bytes", "BYTES")):
        if name.endswith(suffix):
            return metavar
    return "TOPIC" if name.startswith("kafka_topic_") else "VALUE"


def _check_settings(settings: Settings) -> None:
    """Refuses settings that cannot work before anything starts (ValueError naming the setting)."""
    if settings.kafka:
        kafka_settings(settings)
    elif settings.ready_requires_kafka:
        raise ValueError("ready_requires_kafka needs kafka (the bootstrap servers)")
    mqtt.check_settings(settings)
    parse_intervals(settings.silence_intervals)
    if not 0.001 <= settings.idle_timeout_s <= 60:
        raise ValueError(f"idle_timeout_s must be within 0.001 and 60 seconds, not {settings.idle_timeout_s:g}")
    if settings.admission_bulk_bodies < 0:
        raise ValueError(f"admission_bulk_bodies must be 0 (off) or more, not {settings.admission_bulk_bodies}")
    if settings.admission_bulk_narrow_at != 0 and settings.admission_bulk_narrow_at <= 1:
        raise ValueError(
            f"admission_bulk_narrow_at must be 0 (never) or above 1, not {settings.admission_bulk_narrow_at:g}"
        )
    if not 0 <= settings.delivery_nice <= 19:
        raise ValueError(f"delivery_nice must be within 0 and 19, not {settings.delivery_nice}")


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            workers=args.workers,
            data_dir=args.data_dir,
            kafka=args.kafka,
            dry_run=True if args.dry_run else None,
            auth=False if args.no_auth else None,
            mqtt=args.mqtt,
            **{name: getattr(args, name) for name in (*KAFKA_FLAGS, *MQTT_FLAGS)},
        )
        _check_settings(settings)
    except (ValueError, OSError) as error:  # OSError: a --config file that cannot be read
        print(f"tidegate: {error}", file=sys.stderr)
        return 2
    os.environ.update(to_env(settings))
    try:
        # Held until this process exits: no second instance may serve the same data dir.
        instance_lock = hold_instance_lock(settings.data_dir)
        check_address_free(settings.host, settings.port)
    except StartRefused as refusal:
        print(f"tidegate: {refusal}", file=sys.stderr)
        return 1
    print(
        f"tidegate: http://{settings.host}:{settings.port} · data {settings.data_dir.resolve()} · "
        f"{'kafka ' + settings.kafka if settings.kafka else 'embedded spool (no Kafka)'} · "
        f"{'mqtt ' + settings.mqtt + ' · ' if settings.mqtt else ''}"
        f"{settings.workers} worker(s){' · auth off' if not settings.auth else ''}",
        file=sys.stderr,
    )
    server = Granian(
        "tidegate.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        # asyncio's own loop: admission reads its busy share from the selector (`gateway.LoopClock`), which rloop
        # and uvloop, picked by Granian when installed, do not have.
        loop=Loops.asyncio,
        # No WebSocket route exists: an upgrade request is answered as the plain HTTP request it also is.
        websockets=False,
        workers=settings.workers,
        # A worker's stop is bounded (in-flight requests get `shutdown_deadline_s`, then the spool writer stops);
        # one still alive well past that is killed rather than waited for forever. Nothing acknowledged is lost
        # by it: a 202 is sent only once its records are fsynced.
        workers_kill_timeout=math.ceil(settings.shutdown_deadline_s) + 20,
        # A worker that dies (the OOM killer, a crash in native code) is started again while the others go on serving;
        # without this Granian stops every worker and exits when one dies. Safe for what was acknowledged: the dead
        # worker's records are in its spool, whose lock died with it (the new worker claims that directory again),
        # and its dedup claims that never became durable are no duplicates to any other worker. A worker that dies
        # again within 5.5 s of being started makes Granian exit (its crash-loop guard).
        respawn_failed_workers=True,
        log_access=False,
        # Granian's own cap on concurrent requests per worker is set at least as high as the adaptive limit can
        # go: requests must reach the app, where admission sees them and sheds the low ones cheaply, instead of
        # waiting unseen inside Granian.
        backpressure=max(1024, int(settings.admission_max_limit)),
        # Idle keep-alive connections, and headers sent too slowly, are closed instead of holding a descriptor.
        http1_settings=HTTP1Settings(header_read_timeout=round(settings.idle_timeout_s * 1000)),
        # HTTP/1.1 only by default: then the header read timeout runs from the moment a connection is accepted,
        # and a connection that never sends a byte is closed too (protocol detection, `auto`, waits forever).
        http=HTTPModes.http1 if settings.http == "1" else HTTPModes.auto,
    )
    # Delivery (Kafka, the archive) runs in a process of its own, started first and stopped last.
    supervisor = DeliverySupervisor(settings) if settings.kafka or settings.archive else None
    if supervisor is not None:
        supervisor.start()
    try:
        server.serve()
    finally:
        if supervisor is not None:
            supervisor.stop()
        instance_lock.close()
    return 0


def _deliver(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, data_dir=args.data_dir, kafka=args.kafka)
        if not settings.kafka and not settings.archive:
            raise ValueError(
                "tidegate deliver has nothing to do: no kafka (--kafka or TIDEGATE_KAFKA) and the archive is off"
            )
        _check_settings(settings)
    except (ValueError, OSError) as error:
        print(f"tidegate deliver: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _lower_priority(settings.delivery_nice)
    if args.supervise:
        return supervise(settings, args.supervised_by)
    return asyncio.run(run_delivery(settings, args.supervised_by))


def _lower_priority(nice: int) -> None:
    """Runs this process at `nice` (`delivery_nice`) unless it already runs lower (a supervised child inherits its
    supervisor's). On Linux a thread's nice is its own and threads started later inherit it; those already running
    (the native module's allocator starts one as it is imported) are each set.

    Where Linux groups processes by session (autogroups, on by default in many kernels), the CPU is shared between
    sessions first and a nice counts only within its session: a delivery process leading a session of its own (a
    service of its own, started apart from `tidegate serve`) would run level with the workers whatever its nice.
    Then its session's nice is set too. A delivery process started by `tidegate serve` shares the workers' session,
    whose nice is left alone (it would lower the workers with it)."""
    try:
        if nice > os.getpriority(os.PRIO_PROCESS, 0):
            threads = [int(tid) for tid in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
            for thread in threads:
                os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as error:  # a sandbox that forbids it: delivery runs beside the workers, as with 0
        print(f"tidegate deliver: delivery_nice not applied: {error}", file=sys.stderr)
    if os.getsid(0) == os.getpid():
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
        except OSError:
            pass  # no autogroups (or not Linux): the process's nice is what counts


def _keys(args: argparse.Namespace) -> int:
    store = KeyStore(load_settings(data_dir=args.data_dir).keys_file)
    if args.keys_command == "add":
        for device_id in args.device_ids:
            try:
                print(f"{device_id} {store.add(device_id)}")
            except ValueError as error:
                print(f"tidegate: {error}", file=sys.stderr)
                return 1
    elif args.keys_command == "add-operator":
        try:
            print(store.add_operator(args.name))
        except ValueError as error:
            print(f"tidegate: {error}", file=sys.stderr)
            return 1
    elif args.keys_command == "revoke":
        revoked = [f"{e.device_id} tg_{e.key_id}_…" for target in args.targets for e in store.revoke(target)]
        revoked += [
            f"operator {o.name} tgo_{o.key_id}_…"
            for o in (store.revoke_operator(target) for target in args.targets)
            if o is not None
        ]
        for line in revoked:
            print(f"revoked {line}")
        if not revoked:
            print("tidegate: nothing matched", file=sys.stderr)
            return 1
    else:
        for entry in store.entries():
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created_at))
            print(f"{entry.device_id} tg_{entry.key_id}_… created {created}")
        for operator in store.operators():
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(operator.created_at))
            print(f"operator {operator.name} tgo_{operator.key_id}_… created {created}")
    return 0


def _mqtt_acl(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        mqtt.check_settings(settings)
    except (ValueError, OSError) as error:
        print(f"tidegate mqtt-acl: {error}", file=sys.stderr)
        return 2
    skipped = mqtt.write_broker_files(KeyStore(settings.keys_file), settings, args.out)
    for entry in skipped:
        print(
            f"tidegate mqtt-acl: {entry.device_id} key tg_{entry.key_id}_… predates MQTT passwords; left out "
            "(add a new key for the device and revoke this one)",
            file=sys.stderr,
        )
    if settings.mqtt_username and not settings.mqtt_password:
        print(
            f"tidegate mqtt-acl: no mqtt_password for {settings.mqtt_username}: its ACL is written, not its password",
            file=sys.stderr,
        )
    print(f"wrote {args.out / 'passwd'}, {args.out / 'acl'} and a reference {args.out / 'mosquitto.conf'}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    directories = worker_spool_dirs(args.data_dir)
    if not directories:
        print(f"tidegate: no spool under {args.data_dir}", file=sys.stderr)
        return 1
    positions: dict[Path, int] = {}
    for directory in directories:
        spool = Spool.open_read_only(directory)
        stats = spool.stats()
        positions[directory] = 0 if args.from_start else max(stats["acked_seq"], stats["next_seq"] - args.lines)
    out = sys.stdout.buffer
    while True:
        for directory in directories:
            spool = Spool.open_read_only(directory)
            while True:
                records, next_seq = spool.read(positions[directory], max_records=10_000, durable_only=False)
                if len(records) == 0:
                    break
                topics = [args.topic] if args.topic else [t for t in records.topics if t != DUPLICATES_TOPIC]
                for topic in topics:
                    for value in records.values(topic):
                        out.write(value + b"\n")
                positions[directory] = next_seq
        out.flush()
        if not args.follow:
            return 0
        time.sleep(0.25)
        directories = worker_spool_dirs(args.data_dir)
        for directory in directories:
            positions.setdefault(directory, 0)


def _archive_query(args: argparse.Namespace) -> ArchiveQuery:
    settings = load_settings(args.config, data_dir=args.data_dir)
    return ArchiveQuery(ArchiveStore.from_settings(settings))


def _investigate(args: argparse.Namespace) -> int:
    try:
        query = _archive_query(args)
        if args.investigate_command == "event":
            answer: dict[str, Any] | None = query.event(args.event_id)
            if answer is None:
                print(f"tidegate investigate: {args.event_id} is not in the archive", file=sys.stderr)
                return 1
        elif args.investigate_command == "events":
            answer = query.events(
                entity_id=args.entity_id,
                source=args.source,
                event_type=args.event_type,
                start=parse_time("--from", args.start),
                end=parse_time("--to", args.end),
                status=args.status,
                limit=args.limit,
                cursor=args.cursor,
            )
        elif args.investigate_command == "late":
            answer = query.late(
                args.min_lag_ms,
                source=args.source,
                event_type=args.event_type,
                start=parse_time("--from", args.start),
                end=parse_time("--to", args.end),
                limit=args.limit,
            )
        else:
            answer = query.hourly(
                source=args.source,
                event_type=args.event_type,
                start=parse_time("--from", args.start),
                end=parse_time("--to", args.end),
            )
    except (InvalidQuery, ValueError) as error:
        print(f"tidegate investigate: {error}", file=sys.stderr)
        return 2
    except (duckdb.Error, OSError) as error:
        print(f"tidegate investigate: the archive cannot be read: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(render_answer(args.investigate_command, answer))
    return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, data_dir=args.data_dir, kafka=args.kafka)
        if not settings.kafka:
            raise ValueError("tidegate replay needs kafka (the bootstrap servers): --kafka or TIDEGATE_KAFKA")
        kafka = kafka_settings(settings)
        start, end = parse_time("--from", args.start), parse_time("--to", args.end)
    except (InvalidQuery, OSError, ValueError) as error:
        print(f"tidegate replay: {error}", file=sys.stderr)
        return 2
    query = ArchiveQuery(ArchiveStore.from_settings(settings))
    sent = asyncio.run(
        replay(query, kafka, start=start, end=end, source=args.source, event_type=args.event_type, topic=args.topic)
    )
    print(f"replayed {sent} records", file=sys.stderr)
    return 0


def _spool_stats(args: argparse.Namespace) -> int:
    report = {}
    for directory in worker_spool_dirs(args.data_dir):
        stats = Spool.open_read_only(directory).stats()
        report[directory.name] = {
            "segments": stats["segments"],
            "bytes": stats["bytes"],
            "records_written": stats["next_seq"],
            "acknowledged_seq": stats["acked_seq"],
            "archived_seq": read_archived(directory),
            "lag_records": stats["lag_records"],
        }
    print(json.dumps(report, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    """`python -m bench` from a source checkout (bench/ is not part of the installed package)."""
    import subprocess  # noqa: PLC0415

    roots = (Path.cwd(), Path(__file__).resolve().parents[2])
    root = next((r for r in roots if (r / "bench" / "__main__.py").is_file()), None)
    if root is None:
        print("tidegate bench: run it from a tidegate source checkout (no bench/ found)", file=sys.stderr)
        return 2
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args], env={**os.environ, "PYTHONPATH": path})


def _chaos(args: argparse.Namespace) -> int:
    from tidegate.testing import chaos  # noqa: PLC0415 - needs the test extras (the tansu broker)

    return chaos.main(args.size, args.scenario or (), args.work_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidegate", description="Ingest engine for device telemetry and events.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP ingest service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers (default: spool only)")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--dry-run", action="store_true", help="validate and compute ids, write nothing")
    serve.add_argument("--no-auth", action="store_true", help="accept requests without device keys (development)")
    kafka = serve.add_argument_group("Kafka", "each flag sets the setting of its name (README: Settings)")
    for name in KAFKA_FLAGS:
        flag = "--" + name.replace("_", "-")
        choices = choices_of(name)
        if choices == ("true", "false"):
            kafka.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction)
        else:
            kafka.add_argument(flag, dest=name, metavar="|".join(choices) if choices else _metavar(name))
    serve.add_argument("--mqtt", metavar="URL", help="also take messages from this MQTT broker (mqtt://host:1883)")
    mqtt_group = serve.add_argument_group("MQTT", "each flag sets the setting of its name (README: MQTT)")
    for name in MQTT_FLAGS:
        choices = choices_of(name)
        mqtt_group.add_argument(
            "--" + name.replace("_", "-"), dest=name, metavar="|".join(choices) if choices else _metavar(name)
        )
    serve.set_defaults(run=_serve)

    deliver = commands.add_parser(
        "deliver",
        help="drain every worker spool of a data dir to Kafka (tidegate serve runs and supervises it)",
    )
    deliver.add_argument("--data-dir", type=Path)
    deliver.add_argument("--kafka", metavar="BOOTSTRAP")
    deliver.add_argument("--config", type=Path, help="TOML settings file")
    deliver.add_argument("--supervised-by", type=int, metavar="PID", help=argparse.SUPPRESS)
    deliver.add_argument("--supervise", action="store_true", help="run it, and run it again whenever it exits")
    deliver.set_defaults(run=_deliver)

    keys = commands.add_parser("keys", help="manage device API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = key_commands.add_parser("add", help="create a key per device; prints DEVICE_ID KEY lines")
    add.add_argument("device_ids", nargs="+", metavar="DEVICE_ID")
    operator = key_commands.add_parser(
        "add-operator", help="create an operator key (for the operations endpoints, e.g. the silent devices); prints it"
    )
    operator.add_argument("name", metavar="NAME", help="who holds it (a person, a dashboard)")
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key (the key or its id, device's or operator's) or all keys of a device"
    )
    revoke.add_argument("targets", nargs="+", metavar="KEY_OR_DEVICE")
    listing = key_commands.add_parser("list", help="list devices and key ids, and operator keys")
    for sub in (add, operator, revoke, listing):
        sub.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TIDEGATE_DATA_DIR", "data")))
    keys.set_defaults(run=_keys)

    acl = commands.add_parser(
        "mqtt-acl",
        help="write mosquitto's password and ACL files (and a reference mosquitto.conf) from the key store",
    )
    acl.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TIDEGATE_DATA_DIR", "data")))
    acl.add_argument("--out", type=Path, required=True, metavar="DIR")
    acl.add_argument("--config", type=Path, help="TOML settings file (mqtt_username, mqtt_password, topic patterns)")
    acl.set_defaults(run=_mqtt_acl)

    tail = commands.add_parser("tail", help="print spooled records, one JSON line each (the Kafka value)")
    tail.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TIDEGATE_DATA_DIR", "data")))
    tail.add_argument("--topic", help="only this topic")
    tail.add_argument("--follow", "-f", action="store_true")
    tail.add_argument("--from-start", action="store_true", help="from the oldest record still spooled")
    tail.add_argument("--lines", "-n", type=int, default=10, help="without --from-start: the last N records")
    tail.set_defaults(run=_tail)

    spool = commands.add_parser("spool", help="inspect the spool")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True)
    stats = spool_commands.add_parser("stats", help="segments, sizes, acknowledged offsets and lag")
    stats.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TIDEGATE_DATA_DIR", "data")))
    stats.set_defaults(run=_spool_stats)

    bench = commands.add_parser(
        "bench",
        help="benchmarks against the peers, plots and the release gate (python -m bench --help)",
        add_help=False,
        prefix_chars="\0",  # every argument goes to python -m bench
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_bench)

    investigate = commands.add_parser(
        "investigate",
        help="query the archive (DuckDB over its Parquet files): an event, events, late arrivals, counts per hour",
    )
    investigate.add_argument("--data-dir", type=Path)
    investigate.add_argument("--config", type=Path, help="TOML settings file (archive_url, archive_s3_*)")
    investigate.add_argument("--json", action="store_true", help="JSON instead of a table")
    what = investigate.add_subparsers(dest="investigate_command", required=True)
    event = what.add_parser("event", help="one event: its record, metadata and every occurrence (duplicates too)")
    event.add_argument("event_id")
    listing = what.add_parser("events", help="events by entity, source, type and event time (paginated)")
    late = what.add_parser("late", help="late arrivals: ingest_lag_ms above a bound, the latest first")
    late.add_argument("--min-lag-ms", type=int, default=60_000)
    hourly = what.add_parser("hourly", help="records per hour of reception, source and event type")
    for sub in (listing, late, hourly):
        sub.add_argument("--source", help="http or mqtt")
        sub.add_argument("--event-type", help="telemetry or event")
        sub.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601 (UTC unless an offset is given)")
        sub.add_argument("--to", dest="end", metavar="TIME", help="exclusive")
    listing.add_argument("--entity-id", help="the device or entity")
    listing.add_argument("--status", choices=("ACCEPTED", "DUPLICATE"))
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    for sub in (listing, late):
        sub.add_argument("--limit", type=int, default=100)
    investigate.set_defaults(run=_investigate)

    replay = commands.add_parser(
        "replay", help="re-publish archived records to Kafka (same event ids, a replay header), with progress"
    )
    replay.add_argument("--data-dir", type=Path)
    replay.add_argument("--config", type=Path, help="TOML settings file (kafka_*, archive_url, archive_s3_*)")
    replay.add_argument("--kafka", metavar="BOOTSTRAP")
    replay.add_argument("--from", dest="start", metavar="TIME", required=True, help="event time, ISO 8601")
    replay.add_argument("--to", dest="end", metavar="TIME", required=True, help="exclusive")
    replay.add_argument("--source", help="http or mqtt")
    replay.add_argument("--event-type", help="telemetry or event")
    replay.add_argument("--topic", help="publish to this topic instead of each record's own")
    replay.set_defaults(run=_replay)

    chaos = commands.add_parser("chaos", help="the chaos suite: faults under load, then count what was lost")
    chaos.add_argument("--size", choices=("small", "full"), default="full")
    chaos.add_argument("--scenario", action="append", metavar="NAME", help="a scenario's name or letter (repeatable)")
    chaos.add_argument("--work-dir", type=Path, help="keep data and logs here (default: a temporary directory)")
    chaos.set_defaults(run=_chaos)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
