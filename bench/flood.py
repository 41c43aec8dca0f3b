"""Low-priority flood against a high-priority trickle (issue 11), with the adaptive limit and without it.

    python bench/flood.py                    # 16 flooders, 2,000-event bodies, 20 s per phase, 3 rounds
    python bench/flood.py --flooders 8 --seconds 10 --rounds 1
    python bench/flood.py --configs adaptive   # tidegate as shipped only
    python bench/flood.py --generator-priority same   # the flooders' process competes for the CPU as an equal
    python bench/flood.py --high-repeats   # the high device resends a reading it was acknowledged for
    python bench/flood.py --flooders 4 --pause-ms 200   # a bulk load the CPU has room for

One tidegate server (one Granian worker, auth and rate limits off) per configuration, started side by side:
``adaptive`` is tidegate as shipped; ``no-high-spool`` is that with high priority's records in the worker's one
spool (`high_priority_spool` off: their commits carry the flood's bodies appended before them); ``no-bulk-lane`` is
tidegate without the limit's bulk lane (any number of large low-priority bodies in flight, up to the limit's low
share); ``wide-bulk-lane`` keeps the lane 2 bodies wide (`admission_bulk_narrow_at` 0: it never narrows while high
priority slows); ``one-body-lane`` has it 1 body wide at all times; ``no-refusal-hold`` answers a shed at once
instead of holding it (`admission_refusal_hold_s` 0); ``no-limit`` has the adaptive limit pinned far above any load,
no bulk lane and one spool (what tidegate did before issue 11: shedding only on records awaiting fsync, spool fill
and event-loop lag). Each round measures, for each configuration in turn:

* unloaded: one device posts a high-priority reading every 50 ms (from a process of its own);
* flooded: the same, while `--flooders` devices post low-priority NDJSON bodies of `--events` events as fast as
  they are answered, pausing 50 ms after a 503 or 429 (a client that backs off a little, not one that honours
  Retry-After).

With ``--high-repeats`` the high device sends one reading, then the same one again at every tick: a device
retrying a reading whose answer it lost, each answered `duplicate` (202). What such a retry waits for is what is
measured then.

Printed per configuration: the high device's p50/p99 latency unloaded and flooded (median over rounds), the share of
its readings accepted, the flooders' accepted and shed counts, and the spool commits' p50/p99 while flooded (from
`tidegate_spool_commit_seconds`, as bucket bounds): a high reading is acknowledged only after a commit, which
carries the flood's bodies appended before it. Targets: every high reading accepted, flooded p99
at most 3x unloaded.

The clients share the two cores with the server: figures are comparable within a run. The flooders stand for
devices that are other machines, so by default their process runs at the lowest CPU priority, in a session of its
own (Linux's autogroup nice 19, and nice 19 where there are no autogroups): it takes the CPU the server leaves, and
the server still sheds what it cannot take. At the same priority as the server (``--generator-priority same``), the
generator's CPU use delays the server's threads and the measuring device's own wake-ups on the two shared cores
(`perf sched` during a flood: the high device's process waited 13-42 ms at p99 for a CPU after waking), which is
the benchmark's machine, not the server. The high device runs in a session of its own at normal priority.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]

from tidegate.testing.server import Server  # noqa: E402

from bench.harness import bucket_quantile, commit_buckets  # noqa: E402

CONFIGS = {
    "adaptive": {},
    "no-high-spool": {"TIDEGATE_HIGH_PRIORITY_SPOOL": "false"},
    "no-bulk-lane": {"TIDEGATE_ADMISSION_BULK_BODIES": "0"},
    "wide-bulk-lane": {"TIDEGATE_ADMISSION_BULK_NARROW_AT": "0"},
    "one-body-lane": {"TIDEGATE_ADMISSION_BULK_BODIES": "1"},
    "no-refusal-hold": {"TIDEGATE_ADMISSION_REFUSAL_HOLD_S": "0"},
    "no-limit": {
        "TIDEGATE_ADMISSION_INITIAL_LIMIT": "1e9",
        "TIDEGATE_ADMISSION_MIN_LIMIT": "1e9",
        "TIDEGATE_ADMISSION_MAX_LIMIT": "1e9",
        "TIDEGATE_ADMISSION_BULK_BODIES": "0",
        "TIDEGATE_HIGH_PRIORITY_SPOOL": "false",
    },
}


def own_session(nice: int) -> None:
    """A process pool's initializer: this process leaves the bench's session for one of its own, at `nice`. On
    Linux with autogroups (the default on desktop and many server kernels) the CPU is shared fairly between
    sessions first, and a process's nice counts only within its session: the session's own nice
    (`/proc/self/autogroup`) is what yields to the server."""
    os.setsid()
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(nice))
    except OSError:
        pass  # no autogroups: the process's nice is what counts


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def trickle_apart(url: str, seconds: float, tag: str, repeats: bool) -> tuple[list[float], int, int]:
    """`trickle` in a process of its own (see `measure`)."""

    async def run() -> tuple[list[float], int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await trickle(http, seconds, tag, repeats)

    return asyncio.run(run())


async def trickle(http: httpx.AsyncClient, seconds: float, tag: str, repeats: bool) -> tuple[list[float], int, int]:
    """High-priority readings every 50 ms (with `repeats`, the first one again and again): (latencies of accepted
    ones, accepted, sent)."""
    latencies: list[float] = []
    sent = accepted = 0
    end = time.monotonic() + seconds
    first = time.time()
    while time.monotonic() < end:
        body = {
            "device_id": "vip",
            "timestamp": _iso(first if repeats else time.time()),
            "metrics": {"temperature": 21.5, "n": 0 if repeats else sent},
            "metadata": {"tag": tag},
        }
        began = time.perf_counter()
        try:
            response = await http.post("/api/v1/ingest", json=body, headers={"X-Priority": "high"})
        except httpx.HTTPError:
            response = None  # a failed request is not accepted
        elapsed = time.perf_counter() - began
        sent += 1
        if response is not None and response.status_code == 202:
            accepted += 1
            latencies.append(elapsed)
        await asyncio.sleep(max(0.0, 0.05 - elapsed))
    return latencies, accepted, sent


def flood_body(events: int) -> bytes:
    """One NDJSON body of `events` events whose entity ids start with the 12-byte marker ``@@@@@@@@@@@@``, replaced
    per request (bytes.replace is cheap; building 2,000 JSON lines in Python per request would make the client,
    which shares the two cores, the bottleneck)."""
    moment = _iso(time.time())
    lines = (
        json.dumps(
            {
                "source": "flood",
                "event_type": "tick",
                "entity_id": f"@@@@@@@@@@@@-{i}",
                "event_time": moment,
                "payload": {"i": i},
            }
        )
        for i in range(events)
    )
    return "\n".join(lines).encode()


def flood_apart(url: str, flooders: int, events: int, seconds: float, pause: float) -> dict[int, int]:
    """`flooders` devices flooding for `seconds`, each pausing `pause` seconds after an accepted body, in a process
    of its own (see `measure`): answers by status (0: a failed request)."""

    async def run() -> dict[int, int]:
        limits = httpx.Limits(max_connections=flooders + 4)
        counts: dict[int, int] = {}
        stop = asyncio.Event()
        template = flood_body(events)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            devices = [
                asyncio.create_task(flood(http, i, template, pause=pause, stop=stop, counts=counts))
                for i in range(flooders)
            ]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*devices)
        return counts

    return asyncio.run(run())


async def flood(
    http: httpx.AsyncClient, index: int, template: bytes, *, pause: float, stop: asyncio.Event, counts: dict[int, int]
) -> None:
    k = 0
    while not stop.is_set():
        k += 1
        body = template.replace(b"@@@@@@@@@@@@", f"{index:04d}-{k:07d}".encode())
        try:
            response = await http.post(
                "/api/v1/events", content=body, headers={"Content-Type": "application/x-ndjson", "X-Priority": "low"}
            )
        except httpx.HTTPError:
            counts[0] = counts.get(0, 0) + 1
            continue
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if response.status_code in (429, 503):
            await asyncio.sleep(0.05)
        elif pause:
            await asyncio.sleep(pause)


def narrowed_seconds(text: str) -> float:
    """`tidegate_admission_bulk_narrowed_seconds_total` in a scrape of `/metrics`."""
    prefix = "tidegate_admission_bulk_narrowed_seconds_total "
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(
    server: Server, args: argparse.Namespace, tag: str, high: ProcessPoolExecutor, generator: ProcessPoolExecutor
) -> dict[str, float]:
    """The high device and the flooders run in processes of their own (`high`, `generator`): sharing the
    flooders' event loop, the high device's latency was the client's as much as the server's (the flooders' sends
    and answers hold that loop). The flood starts a second before the high device's flooded phase and ends just
    after it; the unloaded and the flooded phase are equally long."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        quiet, _, _ = await loop.run_in_executor(
            high, trickle_apart, server.url, args.seconds, f"{tag}-quiet", args.high_repeats
        )
        flooding = loop.run_in_executor(
            generator, flood_apart, server.url, args.flooders, args.events, args.seconds + 1.5, args.pause_ms / 1000
        )
        await asyncio.sleep(1.0)
        before = (await http.get("/metrics")).text
        loaded, accepted, sent = await loop.run_in_executor(
            high, trickle_apart, server.url, args.seconds, f"{tag}-flooded", args.high_repeats
        )
        after = (await http.get("/metrics")).text
        counts = await flooding
    commits_before, commits_after = commit_buckets(before), commit_buckets(after)
    return {
        "unloaded_p50_ms": percentile(quiet, 0.5) * 1000,
        "unloaded_p99_ms": percentile(quiet, 0.99) * 1000,
        "flooded_p50_ms": percentile(loaded, 0.5) * 1000,
        "flooded_p99_ms": percentile(loaded, 0.99) * 1000,
        "high_accepted": accepted / max(1, sent),
        "low_accepted": counts.get(202, 0),
        "low_shed": counts.get(503, 0) + counts.get(429, 0),
        "lane_narrowed_share": (narrowed_seconds(after) - narrowed_seconds(before)) / args.seconds,
        # Where a high reading's wait may go: the main spool's commits carry the flood's bodies (and, without a
        # spool of high priority's own, the high readings appended after them); the high spool's, its readings.
        **{
            f"{spool}_commit_p{round(q * 100)}_ms_at_most": (
                bucket_quantile(commits_before[spool], commits_after[spool], q) * 1000
            )
            for spool in ("main", "high")
            for q in (0.5, 0.99)
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pause-ms", type=float, default=0.0, help="each flooder pauses this long after an accepted body (0: none)"
    )
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--generator-priority",
        choices=("lowest", "same"),
        default="lowest",
        help="the flooders' process: at nice 19 in its own session (devices on other machines), or at the server's",
    )
    parser.add_argument(
        "--high-repeats", action="store_true", help="the high device resends one reading it was acknowledged for"
    )
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs}
    # A spool quota far above what the runs write, so that shedding comes from CPU pressure, not spool fill.
    env = {
        "TIDEGATE_AUTH": "false",
        "TIDEGATE_RATE_PER_DEVICE": "0",
        "TIDEGATE_LOG_SAMPLE_RATE": "0",
        "TIDEGATE_SPOOL_QUOTA_BYTES": str(64 << 30),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="tidegate-flood-") as tmp:
        servers = {name: Server(Path(tmp) / name, {**env, **extra}).start() for name, extra in configs.items()}
        spawn = multiprocessing.get_context("spawn")
        high = ProcessPoolExecutor(1, mp_context=spawn, initializer=own_session, initargs=(0,))
        nice = 19 if args.generator_priority == "lowest" else 0
        generator = ProcessPoolExecutor(1, mp_context=spawn, initializer=own_session, initargs=(nice,))
        try:
            for round_ in range(args.rounds):
                order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
                for name in order:
                    result = await measure(servers[name], args, f"{name}-{round_}", high, generator)
                    results[name].append(result)
                    print(f"round {round_ + 1} {name}: " + ", ".join(f"{k} {v:,.3g}" for k, v in result.items()))
        finally:
            high.shutdown()
            generator.shutdown()
            for server in servers.values():
                server.stop()
    print(
        f"\n{args.flooders} low-priority flooders ({args.events}-event NDJSON bodies, generator at "
        f"{args.generator_priority} priority) vs one high reading / 50 ms"
    )
    print(
        "| configuration | high p50 / p99 unloaded (ms) | high p50 / p99 flooded (ms) | p99 flooded / unloaded "
        "| high accepted | low accepted | low shed | bulk lane narrowed "
        "| commit p50 / p99 flooded, main / high spool (ms, bucket bound) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        # Bucket bounds are not a measure to take the median of: the highest over the rounds.
        med = {
            key: (max if key.endswith("_at_most") else statistics.median)(run[key] for run in runs) for key in runs[0]
        }
        print(
            f"| {name} | {med['unloaded_p50_ms']:.1f} / {med['unloaded_p99_ms']:.1f} "
            f"| {med['flooded_p50_ms']:.1f} / {med['flooded_p99_ms']:.1f} "
            f"| {med['flooded_p99_ms'] / med['unloaded_p99_ms']:.1f}x | {med['high_accepted']:.3f} "
            f"| {med['low_accepted']:,.0f} | {med['low_shed']:,.0f} | {med['lane_narrowed_share']:.0%} "
            f"| ≤{med['main_commit_p50_ms_at_most']:g} / ≤{med['main_commit_p99_ms_at_most']:g}, "
            f"≤{med['high_commit_p50_ms_at_most']:g} / ≤{med['high_commit_p99_ms_at_most']:g} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
