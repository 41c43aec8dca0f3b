"""The bench's own arithmetic behind the overload targets (bench/harness.py): the spool commit times it reads from
`/metrics` around each ramp level, and the rule that leaves a round out when the disk, not the server, may have set
its p99. The commit times come from a real spool's commits, rendered by tidegate's own metrics as a scrape of
`/metrics` gives them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tidegate
from tidegate.metrics import Metrics

from bench.harness import (
    STALL_SHARE_OF_LEVEL,
    bucket_quantile,
    commit_buckets,
    commits_between,
    commits_over,
    disk_stalled,
    level_ratios,
    median,
    round_stalled,
    stall_at_most,
)
from tests.conftest import reading


def scrape(main: tidegate.Spool, high: tidegate.Spool) -> str:
    """`/metrics` as a worker renders its spools' commit times (`Gateway`), for these two spools."""
    metrics = Metrics()
    metrics.native_histogram(
        "tidegate_spool_commit_seconds",
        "Spool commits.",
        lambda: [(("main",), main.commit_times()), (("high",), high.commit_times())],
        labels=("spool",),
    )
    return metrics.render()


def test_a_commit_slowed_past_50_ms_is_counted_and_bounded_from_a_scrape(tmp_path: Path) -> None:
    main, high = tidegate.Spool(tmp_path / "main"), tidegate.Spool(tmp_path / "high")
    records = (
        tidegate.Validator(tidegate.Contract.telemetry())
        .validate(json.dumps([reading()]).encode(), "application/json")
        .records
    )
    before = commit_buckets(scrape(main, high))
    for _ in range(5):
        high.append(records)
        high.commit()
    high.inject_commit_delay(60)
    high.append(records)
    high.commit()
    high.inject_commit_delay(0)
    after = commit_buckets(scrape(main, high))

    assert commits_between(before["high"], after["high"]) == 6
    assert commits_between(before["main"], after["main"]) == 0
    # No speed is asked of the disk here: the injected 60 ms is a floor on the slowed commit's time, so it is over
    # 50 ms however fast the disk is; the other five may or may not be (a stalled disk), hence "at least".
    assert commits_over(before["high"], after["high"], 0.05) >= 1
    # Counted at its bucket's upper bound: 100 ms at the least, the first bound past 50 ms.
    assert stall_at_most(before["high"], after["high"], 0.05) >= 0.1
    assert stall_at_most(before["main"], after["main"], 0.05) == 0.0


def test_stall_at_most_counts_each_commit_at_its_buckets_upper_bound() -> None:
    bounds = (0.025, 0.05, 0.1, 0.25, 2.5, math.inf)
    before = dict.fromkeys(bounds, 10.0)
    # Cumulative counts: 1 commit in (0.025, 0.05], 2 in (0.05, 0.1], 1 in (0.1, 0.25].
    after = dict(zip(bounds, (100.0, 101.0, 103.0, 104.0, 104.0, 104.0), strict=True))
    assert commits_over(before, after, 0.05) == 3
    assert math.isclose(stall_at_most(before, after, 0.05), 2 * 0.1 + 0.25)
    # One commit past the last bound: its time has no bound.
    assert stall_at_most(before, {**after, math.inf: 105.0}, 0.05) == math.inf


def test_bucket_quantile_is_the_upper_bound_of_the_bucket_holding_it() -> None:
    bounds = (0.025, 0.05, 0.1, 0.25, 2.5, math.inf)
    before = dict.fromkeys(bounds, 10.0)
    # Four commits: 1 in (0, 0.025], 2 in (0.05, 0.1], 1 in (0.1, 0.25].
    after = dict(zip(bounds, (11.0, 11.0, 13.0, 14.0, 14.0, 14.0), strict=True))
    assert bucket_quantile(before, after, 0.25) == 0.025
    assert bucket_quantile(before, after, 0.5) == 0.1
    assert bucket_quantile(before, after, 0.99) == 0.25
    assert math.isnan(bucket_quantile(before, before, 0.5))  # nothing observed


def level(duration_s: float, high_p99_ms: float, **high_commits: Any) -> dict[str, Any]:
    """A ramp level as the bench records it, with only the figures the targets read."""
    entry: dict[str, Any] = {
        "duration_s": duration_s,
        "priorities": {"high": {"goodput_fraction_of_offered": 1.0, "p99_accepted_ms": high_p99_ms}},
        "goodput_fraction_of_capacity": 1.0,
        "p99_accepted_ms": high_p99_ms,
    }
    entry["priorities"]["high"]["onset_p99_accepted_ms"] = high_p99_ms
    if high_commits:
        entry["commits"] = {"high": {"p99_ms": 2.5, "total": 2000, **high_commits}}
    return entry


def test_a_level_stalled_when_its_slow_commits_can_have_held_its_slowest_percent() -> None:
    share_ms = STALL_SHARE_OF_LEVEL * 24 * 1000
    assert not disk_stalled(level(24, 3.5, over_50ms=2, over_50ms_at_most_ms=share_ms - 1))
    assert disk_stalled(level(24, 27.7, over_50ms=2, over_50ms_at_most_ms=share_ms))
    # The same stalls in a 5 s level at 2x can hold its slowest percent.
    assert disk_stalled(level(5, 19.4, over_50ms=2, over_50ms_at_most_ms=share_ms - 1))
    # Results that counted slow commits without their times: any one of them leaves the level out.
    assert disk_stalled(level(24, 3.5, over_50ms=1))
    assert not disk_stalled(level(24, 3.5, over_50ms=0))
    # Results from before commits were recorded read as measured.
    assert not disk_stalled(level(24, 3.5))


def test_a_round_stalled_on_either_side_is_left_out_of_the_median() -> None:
    clean_unloaded = level(24, 4.0, over_50ms=0, over_50ms_at_most_ms=0.0)
    clean_loaded = level(5, 12.0, over_50ms=0, over_50ms_at_most_ms=0.0)
    stalled_unloaded = level(24, 27.7, over_50ms=2, over_50ms_at_most_ms=500.0)
    stalled_loaded = level(5, 217.0, over_50ms=3, over_50ms_at_most_ms=300.0)
    rounds = [
        {"unloaded": clean_unloaded, "loaded": clean_loaded},
        {"unloaded": stalled_unloaded, "loaded": clean_loaded},
        {"unloaded": clean_unloaded, "loaded": stalled_loaded},
    ]
    assert [round_stalled(pair) for pair in rounds] == [False, True, True]
    per_round = [level_ratios(pair["loaded"], pair["unloaded"]) for pair in rounds]
    assert per_round[0]["high_p99/unloaded_high_p99"] == 3.0
    assert all(math.isnan(figures["high_p99/unloaded_high_p99"]) for figures in per_round[1:])
    # Goodput is no ratio to the unloaded level's: it is kept for every round.
    assert [figures["high_goodput/offered"] for figures in per_round] == [1.0, 1.0, 1.0]
    assert median([figures["high_p99/unloaded_high_p99"] for figures in per_round]) == 3.0
    assert math.isnan(median([figures["high_p99/unloaded_high_p99"] for figures in per_round[1:]]))
