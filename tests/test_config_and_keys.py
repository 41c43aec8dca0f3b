"""Settings precedence and the key store behind `tidegate keys`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tidegate.auth import KeyStore, presented_key
from tidegate.config import load_settings, to_env


def test_settings_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text('[tidegate]\nport = 9000\nkafka = "broker:9092"\nrate_per_device = 5\nauth = false\n')
    settings = load_settings(config, env={"TIDEGATE_PORT": "9100", "TIDEGATE_DRY_RUN": "true"}, workers=3)
    assert (settings.port, settings.kafka, settings.rate_per_device, settings.auth) == (9100, "broker:9092", 5.0, False)
    assert (settings.dry_run, settings.workers, settings.host) == (True, 3, "127.0.0.1")
    assert load_settings(env=to_env(settings)) == settings, "workers get the same settings through the environment"


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(config, env={})
    with pytest.raises(ValueError, match="priority_ingest"):
        load_settings(env={"TIDEGATE_PRIORITY_INGEST": "urgent"})


def test_keys_are_hashed_rotated_and_revoked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", reload_interval=0)
    first, second = store.add("dev-1"), store.add("dev-1")
    assert first.startswith("tg_") and first != second
    assert store.device_for(first) == store.device_for(second) == "dev-1"
    assert first.split("_", 2)[2] not in (tmp_path / "keys.json").read_text(), "only hashes are stored"
    with pytest.raises(ValueError, match="already holds 2 keys"):
        store.add("dev-1")
    assert store.device_for(first[:-1] + ("x" if first[-1] != "x" else "y")) is None
    assert store.device_for("tg_unknown_secret") is None and store.device_for("nonsense") is None
    other = KeyStore(tmp_path / "keys.json", reload_interval=0)
    other.revoke(first)
    assert store.device_for(first) is None, "another process's revocation is seen"
    assert store.device_for(second) == "dev-1"
    assert presented_key(None, "Bearer  abc ") == "abc" and presented_key(None, "Basic abc") is None


def test_keys_cli(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        command = [sys.executable, "-m", "tidegate", "keys", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    lines = run("add", "a", "b").splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    assert len(run("list").splitlines()) == 2
    assert "revoked a" in run("revoke", "a")
    assert [line.split()[0] for line in run("list").splitlines()] == ["b"]
