"""The chaos suite, small size: real faults against a real server and broker; nothing acknowledged is lost.

Each scenario lives in ``tidegate.testing.chaos`` (``tidegate chaos --size full`` runs the full size) and returns
one row: acknowledged / in spool / in Kafka / duplicates delivered / lost. A scenario passes when lost is 0 and the
service recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tidegate.testing.chaos import SCENARIOS, format_table, run_scenario

RUNNABLE = [scenario.name for scenario in SCENARIOS.values() if scenario.run is not None]


@pytest.mark.parametrize("name", RUNNABLE)
def test_chaos_scenario(name: str, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    row = run_scenario(name, tmp_path, "small")
    print(f"\n{format_table([row])}")
    for field in ("acknowledged", "in_spool", "in_kafka", "duplicates_delivered", "lost", "lost_by_broker"):
        record_property(field, getattr(row, field))
    assert row.acknowledged > 0, row
    assert row.lost == 0, format_table([row])
    assert row.recovered, format_table([row])
