from __future__ import annotations

import pytest

from .data import documents as make_documents


@pytest.fixture(scope="session")
def documents() -> dict[str, bytes]:
    """Format name -> one deterministic document of 1000 readings (built once per session)."""
    return make_documents()
