"""`tidegate investigate`'s tables for a terminal (`--json` prints the answers as they are)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["render_answer", "table"]


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Columns padded to their widest cell, numbers right-aligned; `-` for a missing value."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [all(isinstance(row.get(column), int | float) for row in rows) and rows for column in columns]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for line in cells:
        lines.append(
            "  ".join(
                cell.rjust(width) if right else cell.ljust(width)
                for cell, width, right in zip(line, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


LISTED = ("event_time", "event_id", "status", "source", "event_type", "entity_id", "ingest_lag_ms")


def render_answer(command: str, answer: dict[str, Any]) -> str:
    if command == "event":
        metadata = answer["metadata"]
        width = max(len(name) for name in metadata)
        lines = [f"{'event_id'.ljust(width)}  {answer['event_id']}"]
        lines += [f"{name.ljust(width)}  {_cell(value)}" for name, value in metadata.items() if name != "headers"]
        lines += ["", f"occurrences ({len(answer['occurrences'])}, {answer['duplicates']} duplicate):"]
        lines.append(table(answer["occurrences"], ("ingest_time", "status", "source", "ingest_lag_ms", "archive_key")))
        lines += ["", "record:", json.dumps(answer["record"], indent=2)]
        return "\n".join(lines)
    if command == "events":
        lines = [table(answer["events"], LISTED), f"({answer['count']} rows)"]
        if answer["next_cursor"]:
            lines.append(f"more: --cursor {answer['next_cursor']}")
        return "\n".join(lines)
    if command == "late":
        return "\n".join(
            [
                table(answer["events"], (*LISTED[:-1], "ingest_time", "ingest_lag_ms")),
                f"({answer['count']} rows with ingest_lag_ms > {answer['min_lag_ms']:,})",
            ]
        )
    return table(answer["hours"], ("hour", "source", "event_type", "accepted", "duplicates", "max_ingest_lag_ms"))
