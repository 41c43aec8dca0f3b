"""tidegate's `validate` against msgspec, Pydantic v2 and orjson + hand-written checks, per 1000-reading document.

Run: python -m pytest bench/test_core_bench.py -p no:cacheprovider --benchmark-only
(or python -m bench.report for the Markdown table). The correctness tests below run without --benchmark-only.
"""

from __future__ import annotations

import pytest
import tidegate
from pytest_benchmark.fixture import BenchmarkFixture

from .competitors import LIBRARIES, Checked, Outcome, outcome, runner
from .data import BAD_RECORDS, FORMATS, NOW_MS, ODD_BUT_VALID_RECORDS, RECORDS_PER_DOCUMENT, encode, readings


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_validate(benchmark: BenchmarkFixture, documents: dict[str, bytes], fmt: str, library: str) -> None:
    body = documents[fmt]
    run = runner(library, fmt, NOW_MS)
    benchmark.group = fmt
    benchmark.extra_info.update(library=library, format=fmt, records=RECORDS_PER_DOCUMENT, body_bytes=len(body))

    result = benchmark(run, body)

    if isinstance(result, tidegate.ValidationResult):
        assert result.accepted == RECORDS_PER_DOCUMENT, result.rejected[:3]
        assert len(result.event_ids) == RECORDS_PER_DOCUMENT
        assert len(result.records) == RECORDS_PER_DOCUMENT + len({w.index for w in result.warnings})
    else:
        assert isinstance(result, Checked)
        assert len(result.records) == RECORDS_PER_DOCUMENT
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        median = stats.stats.median
        benchmark.extra_info["records_per_s"] = RECORDS_PER_DOCUMENT / median
        benchmark.extra_info["mb_per_s"] = len(body) / median / 1e6


# --- correctness: every competitor enforces the same contract ---------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_valid_document_same_outcome(documents: dict[str, bytes], fmt: str) -> None:
    """All accept every reading of the benchmark document and flag the same out-of-range values."""
    expected = outcome("tidegate", fmt, documents[fmt], NOW_MS)
    assert expected.accepted == RECORDS_PER_DOCUMENT
    assert expected.rejected == ()
    assert len(expected.warnings) >= 5  # the data carries some out-of-range values on purpose
    for library in LIBRARIES[1:]:
        assert outcome(library, fmt, documents[fmt], NOW_MS) == expected, library


BAD_INDEX = 3
DOCUMENT_SIZE = 7


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_rejected(case: str, fmt: str, library: str) -> None:
    """A bad reading in the middle of a document is caught, and attributed to its index, by every library."""
    records = readings(DOCUMENT_SIZE - 1)
    records.insert(BAD_INDEX, BAD_RECORDS[case])
    got = outcome(library, fmt, encode(fmt, records), NOW_MS)
    if library == "tidegate":  # isolates bad records
        assert got == Outcome(DOCUMENT_SIZE - 1, (BAD_INDEX,), got.warnings)
    else:  # refuses the document at the first bad record
        assert got == Outcome(0, (BAD_INDEX,), ())


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(ODD_BUT_VALID_RECORDS))
def test_odd_but_valid_record_accepted(case: str, fmt: str, library: str) -> None:
    records = readings(DOCUMENT_SIZE - 1)
    records.insert(BAD_INDEX, ODD_BUT_VALID_RECORDS[case])
    got = outcome(library, fmt, encode(fmt, records), NOW_MS)
    assert (got.accepted, got.rejected) == (DOCUMENT_SIZE, ())


def test_benchmark_data_is_deterministic() -> None:
    assert readings(50) == readings(50)
    assert encode("ndjson", readings(3)).count(b"\n") == 3
