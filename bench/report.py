"""Runs the core benchmark suite and prints a Markdown table of the results.

    python -m bench.report                      # correctness tests + benchmarks, then the table
    python -m bench.report -- --benchmark-max-time=0.5
    python -m bench.report --json results.json  # only render a file written by --benchmark-json

Ratios are of median times: above 1 means slower than the reference, below 1 faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = "bench/test_core_bench.py"


def run_suite(json_path: Path, extra: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        SUITE,
        "-p",
        "no:cacheprovider",
        "-q",
        f"--benchmark-json={json_path}",
        *extra,
    ]
    print("$", " ".join(command), file=sys.stderr)
    return subprocess.call(command, cwd=ROOT)


def _ratio(value: float, reference: float | None) -> str:
    return "-" if reference is None else f"{value / reference:.2f}x"


def table(results: dict[str, Any]) -> str:
    rows: dict[str, list[tuple[str, float, float]]] = {}
    records = 1000
    for bench in results["benchmarks"]:
        info = bench.get("extra_info", {})
        library = info.get("library") or bench["params"]["library"]
        fmt = info.get("format") or bench["params"]["fmt"]
        median = float(bench["stats"]["median"])
        records = int(info.get("records", 1000))
        rows.setdefault(fmt, []).append((library, median, records / median))

    lines = [
        f"| library | format | median ms / {records}-record doc | records/s (median) | vs msgspec | vs tidegate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for fmt, entries in rows.items():
        medians = {library: median for library, median, _ in entries}
        for library, median, rate in sorted(entries, key=lambda entry: entry[1]):
            lines.append(
                f"| {library} | {fmt} | {median * 1e3:.2f} | {rate:,.0f} | "
                f"{_ratio(median, medians.get('msgspec'))} | {_ratio(median, medians.get('tidegate'))} |"
            )
    return "\n".join(lines)


def context(results: dict[str, Any]) -> str:
    machine = results.get("machine_info", {})
    versions = []
    for package in ("tidegate", "msgspec", "pydantic", "orjson"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:  # pragma: no cover
            versions.append(f"{package} ?")
    rounds = ", ".join(str(bench["stats"]["rounds"]) for bench in results["benchmarks"])
    return (
        f"Python {machine.get('python_version', platform.python_version())}, "
        f"{os.cpu_count()} CPUs ({machine.get('cpu', {}).get('brand_raw', platform.processor() or '?')}); "
        f"{'; '.join(versions)}; rounds per benchmark: {rounds}. Ratios are of median times (>1 = slower)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="render this pytest-benchmark JSON file instead of running")
    parser.add_argument("--save", type=Path, help="keep the JSON written by the run here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    if args.json is not None:
        path: Path = args.json
    else:
        path = args.save or Path(tempfile.mkstemp(prefix="tidegate-bench-", suffix=".json")[1])
        code = run_suite(path.resolve(), args.pytest_args)
        if code != 0:
            print(f"benchmark suite failed (exit {code}); no table", file=sys.stderr)
            return code
    results = json.loads(path.read_text())
    if args.json is None and args.save is None:
        path.unlink()
    print()
    print(table(results))
    print()
    print(context(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
