"""The metrics registry (`tidegate.metrics`): counts from several threads add up, none lost."""

from __future__ import annotations

import sys
import threading

from tidegate.metrics import Counter, Histogram


def test_counts_from_many_threads_add_up_and_outlive_their_threads() -> None:
    requests = Counter("requests_total", "Requests.", ("status",))
    latency = Histogram("latency_seconds", "Latency.", (0.01, 0.1), ("route",))
    switch = sys.getswitchinterval()
    # Switch threads as often as the interpreter can: an update that is a read and a write would lose counts.
    sys.setswitchinterval(1e-6)
    try:
        start = threading.Barrier(8)

        def count() -> None:
            start.wait()
            for _ in range(20_000):
                requests.inc(("202",))
                latency.observe(0.05, ("ingest",))

        threads = [threading.Thread(target=count) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    requests.inc(("503",), 2)
    assert requests.totals() == {("202",): 160_000.0, ("503",): 2.0}
    assert latency.count(("ingest",)) == 160_000
    assert 'requests_total{status="202"} 160000' in list(requests.render())
    lines = list(latency.render())
    assert 'latency_seconds_bucket{route="ingest",le="0.01"} 0' in lines
    assert 'latency_seconds_bucket{route="ingest",le="0.1"} 160000' in lines
    assert 'latency_seconds_count{route="ingest"} 160000' in lines


def test_counts_kept_elsewhere_are_read_at_each_render_not_kept() -> None:
    records = Counter("records_total", "Records.", ("outcome",))
    assert 'records_total{outcome="accepted"} 5' in list(records.render([(("accepted",), 5.0)]))
    lines = list(records.render([(("accepted",), 7.0), (("rejected",), 1.0)]))
    assert 'records_total{outcome="accepted"} 7' in lines and 'records_total{outcome="rejected"} 1' in lines
    assert records.totals() == {}
