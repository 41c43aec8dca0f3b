"""PNG plots of a `python -m bench` results document (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"tidegate": "#1f77b4", "tidegate-kafka": "#17becf", "noop": "#7f7f7f", "reference": "#d62728"}
PRIORITY_COLORS = {"high": "#2ca02c", "medium": "#ff7f0e", "low": "#9467bd"}
PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))


def _finite(value: float) -> bool:
    return value is not None and not math.isnan(value) and value > 0


def throughput_latency(results: Mapping[str, Any], path: Path) -> Path:
    scenarios = results["scenarios"]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(13, 3.4 * len(scenarios)), squeeze=False)
    for row, scenario in enumerate(scenarios.values()):
        servers = list(scenario["servers"])
        left, right = axes[row]
        per_request = scenario["records_per_request"]
        key, unit = ("records_per_s", "records/s") if per_request > 1 else ("rps", "requests/s")
        values = [scenario["servers"][s]["median"][key] for s in servers]
        bars = left.bar(servers, values, color=[COLORS.get(s, "#333") for s in servers])
        left.set_ylabel(unit)
        left.set_title(f"{scenario['title']}: throughput (median, {scenario['tool']})", fontsize=10)
        metric = "records" if per_request > 1 else "rps"
        for bar, server, value in zip(bars, servers, values, strict=True):
            label = f"{value:,.0f}"
            paired = scenario["paired_ratios"].get(f"{metric}.tidegate/{server}")
            if paired is not None:
                label += f"\ntidegate = {paired['median']:.2f}x"
            left.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
        left.set_ylim(0, max(v for v in values if _finite(v)) * 1.3)
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            median = scenario["servers"][server]["median"]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(PERCENTILES))]
            right.bar(xs, [median[k] for k, _ in PERCENTILES], width, label=server, color=COLORS.get(server, "#333"))
        right.set_xticks(range(len(PERCENTILES)), [label for _, label in PERCENTILES])
        right.set_yscale("log")
        right.set_ylabel("latency ms (log)")
        right.set_title(f"{scenario['title']}: latency, {scenario['connections']} connections", fontsize=10)
        right.legend(fontsize=8)
    fig.suptitle(f"tidegate vs peers, one Granian worker each, same session ({results['timestamp']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overload(results: Mapping[str, Any], path: Path) -> Path:
    data = results["overload"]
    levels = data["levels"]
    xs = [entry["level"] for entry in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    for priority, color in PRIORITY_COLORS.items():
        goodput = [e["priorities"][priority]["goodput_rps"] for e in levels]
        left.plot(xs, goodput, "o-", color=color, label=f"{priority} goodput")
        left.plot(
            xs, [e["priorities"][priority]["offered_rps"] for e in levels], "--", color=color, alpha=0.5,
            label=f"{priority} offered",
        )  # fmt: skip
    left.plot(xs, [e["goodput_rps"] for e in levels], "o-", color="black", label="total goodput")
    left.axhline(data["capacity_rps"], color="black", linestyle=":", label="measured capacity")
    left.set_xscale("log", base=2)
    left.set_xticks(xs, [f"{x:g}x" for x in xs])
    left.set_xlabel("offered load (x measured capacity)")
    left.set_ylabel("requests/s")
    left.set_title("goodput (202) per priority vs offered load", fontsize=10)
    left.legend(fontsize=7, ncol=2)
    for priority, color in PRIORITY_COLORS.items():
        values = [e["priorities"][priority]["p99_accepted_ms"] for e in levels]
        right.plot(xs, values, "o-", color=color, label=f"{priority} p99 of accepted")
    right.plot(xs, [e["p99_accepted_ms"] for e in levels], "o-", color="black", label="all p99 of accepted")
    right.set_xscale("log", base=2)
    right.set_xticks(xs, [f"{x:g}x" for x in xs])
    right.set_yscale("log")
    right.set_xlabel("offered load (x measured capacity)")
    right.set_ylabel("latency ms (log)")
    twin = right.twinx()
    twin.plot(xs, [e["rss_mb_max"] for e in levels], "s:", color="#8c564b", label="tidegate RSS MB (max)")
    twin.set_ylabel("RSS MB")
    twin.set_ylim(bottom=0)
    handles, labels = right.get_legend_handles_labels()
    more_handles, more_labels = twin.get_legend_handles_labels()
    right.legend(handles + more_handles, labels + more_labels, fontsize=7)
    right.set_title("latency of accepted requests and memory vs offered load", fontsize=10)
    fig.suptitle(
        f"tidegate overload ramp, capacity {data['capacity_rps']:,.0f} req/s; load: {data['tool']} "
        f"({results['timestamp']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(results: Mapping[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    paths = []
    if results.get("scenarios"):
        paths.append(throughput_latency(results, out_dir / f"{stamp}-throughput-latency.png"))
    if results.get("overload"):
        paths.append(overload(results, out_dir / f"{stamp}-overload.png"))
    return paths
