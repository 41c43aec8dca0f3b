"""The chaos suite, small size: real faults against a real server and broker; nothing acknowledged is lost.

Each scenario lives in ``tidegate.testing.chaos`` (``tidegate chaos --size full`` runs the full size) and returns
one row: acknowledged / in spool / in Kafka / duplicates delivered / lost. A scenario passes when lost is 0 and the
service recovered, and (j, which overloads the server on purpose) something was shed: `ChaosRow.failures`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import tidegate
from tidegate.testing.chaos import SCENARIOS, format_table, offset_gaps, run_scenario, whereabouts

from tests.conftest import reading

RUNNABLE = [scenario.name for scenario in SCENARIOS.values() if scenario.run is not None]


@pytest.mark.parametrize("name", RUNNABLE)
def test_chaos_scenario(name: str, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    row = run_scenario(name, tmp_path, "small")
    print(f"\n{format_table([row])}")
    for field in ("acknowledged", "in_spool", "in_kafka", "duplicates_delivered", "lost", "lost_by_broker"):
        record_property(field, getattr(row, field))
    assert row.passed, "; ".join(row.failures()) + "\n" + format_table([row])


def test_a_loss_is_located_in_the_spool_and_the_topic(tmp_path: Path) -> None:
    """What a row that lost records says about them: where they are in the spools against the checkpoint, and the
    offsets the broker assigned that no record read holds."""
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    result = validator.validate(json.dumps([reading(f"dev-{i}") for i in range(6)]).encode())
    spool = tidegate.Spool(tmp_path / "data" / "spool" / "w0")
    spool.append(result.records)
    spool.commit()
    spool.ack(2)
    ids = result.records.event_ids()
    assert whereabouts(tmp_path / "data", {ids[2], ids[3], ids[5]}) == [
        "w0: 3 on telemetry-raw, at 2-3, 5 (checkpoint 2, next 6)"
    ]
    read = [SimpleNamespace(partition=0, offset=offset) for offset in (0, 1, 4)]
    read.append(SimpleNamespace(partition=1, offset=0))
    assert (
        offset_gaps(read)
        == "offsets read at the end: partition 0: 3 records, gaps at 2-3; partition 1: 1 records, no gap"
    )
