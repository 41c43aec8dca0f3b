"""Benchmarks of tidegate's core against msgspec, Pydantic and orjson (see bench/report.py)."""
