"""Settings precedence and the key store behind `tidegate keys`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tidegate._native import Keys
from tidegate.auth import KeyStore, presented_key
from tidegate.config import load_settings, to_env


def test_settings_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text('[tidegate]\nport = 9000\nkafka = "broker:9092"\nrate_per_device = 5\nauth = false\n')
    settings = load_settings(config, env={"TIDEGATE_PORT": "9100", "TIDEGATE_DRY_RUN": "true"}, workers=3)
    assert (settings.port, settings.kafka, settings.rate_per_device, settings.auth) == (9100, "broker:9092", 5.0, False)
    assert (settings.dry_run, settings.workers, settings.host) == (True, 3, "127.0.0.1")
    assert load_settings(env=to_env(settings)) == settings, "workers get the same settings through the environment"


def test_kafka_settings_precedence(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text(
        "[tidegate]\n"
        'kafka = "file-broker:9093"\n'
        "kafka_acks = 1\n"
        'kafka_compression = "gzip"\n'
        'kafka_sasl_mechanism = "SCRAM-SHA-512"\n'
        'kafka_sasl_username = "file-user"\n'
        'kafka_sasl_password = "file-secret"\n'
        'kafka_tls_ca_file = "/etc/kafka/ca.pem"\n'
        'kafka_topic_telemetry = "file-telemetry"\n'
        'kafka_topic_events = "file-events"\n'
        "kafka_linger_ms = 20\n"
        "ready_requires_kafka = true\n"
    )
    env = {
        "TIDEGATE_KAFKA_SASL_PASSWORD": "env-secret",
        "TIDEGATE_KAFKA_TOPIC_EVENTS": "env-events",
        "TIDEGATE_KAFKA_TLS_CHECK_HOSTNAME": "false",
        "TIDEGATE_KAFKA_COMPRESSION": "zstd",
    }
    settings = load_settings(config, env=env, kafka_compression="lz4", kafka_topic_dead_letter="flag-dlq")
    assert (settings.kafka, settings.kafka_acks, settings.kafka_linger_ms) == ("file-broker:9093", "1", 20.0)
    assert (settings.kafka_sasl_mechanism, settings.kafka_sasl_username) == ("SCRAM-SHA-512", "file-user")
    assert settings.kafka_sasl_password == "env-secret", "the environment overrides the file"
    assert settings.kafka_compression == "lz4", "flags override the environment"
    assert settings.kafka_topics == ("file-telemetry", "env-events", "flag-dlq", "device-alerts")
    assert (settings.kafka_tls_ca_file, settings.kafka_tls_check_hostname) == (Path("/etc/kafka/ca.pem"), False)
    assert settings.ready_requires_kafka and not settings.kafka_tls
    assert load_settings(env=to_env(settings)) == settings, "workers get the same settings through the environment"
    defaults = load_settings(env={})
    assert (defaults.kafka_acks, defaults.kafka_compression, defaults.ready_requires_kafka) == ("all", "none", False)
    assert defaults.kafka_topics == ("telemetry-raw", "events-raw", "ingest-dlq", "device-alerts")


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(config, env={})
    with pytest.raises(ValueError, match="priority_ingest"):
        load_settings(env={"TIDEGATE_PRIORITY_INGEST": "urgent"})
    with pytest.raises(ValueError, match="kafka_compression must be one of none, gzip, snappy, lz4, zstd"):
        load_settings(env={"TIDEGATE_KAFKA_COMPRESSION": "brotli"})
    with pytest.raises(ValueError, match="kafka_sasl_mechanism"):
        load_settings(env={"TIDEGATE_KAFKA_SASL_MECHANISM": "GSSAPI"})
    for intervals in ("meter", "meter-=soon", "meter-=0", "=5"):
        with pytest.raises(ValueError, match="silence_intervals"):
            _ = load_settings(env={"TIDEGATE_SILENCE_INTERVALS": intervals}).silence_interval_rules
    rules = load_settings(env={"TIDEGATE_SILENCE_INTERVALS": " meter-=900, meter-hall=60 ,"}).silence_interval_rules
    assert rules == [("meter-", 900.0), ("meter-hall", 60.0)]


def test_keys_are_hashed_rotated_and_revoked(tmp_path: Path) -> None:
    writer = KeyStore(tmp_path / "keys.json")
    first, second = writer.add("dev-1"), writer.add("dev-1")
    store = Keys(tmp_path / "keys.json", reload_interval=0)
    assert first.startswith("tg_") and first != second
    assert store.device_for(first) == store.device_for(second) == "dev-1"
    assert first.split("_", 2)[2] not in (tmp_path / "keys.json").read_text(), "only hashes are stored"
    with pytest.raises(ValueError, match="already holds 2 keys"):
        writer.add("dev-1")
    assert store.device_for(first[:-1] + ("x" if first[-1] != "x" else "y")) is None
    assert store.device_for("tg_unknown_secret") is None and store.device_for("nonsense") is None
    other = KeyStore(tmp_path / "keys.json")
    other.revoke(first)
    assert store.device_for(first) is None, "another process's revocation is seen"
    assert store.device_for(second) == "dev-1"
    assert presented_key(None, "Bearer  abc ") == "abc" and presented_key(None, "Basic abc") is None


def test_operator_keys_are_hashed_apart_from_device_keys_and_revoked(tmp_path: Path) -> None:
    writer = KeyStore(tmp_path / "keys.json")
    device = writer.add("dev-1")
    operator = writer.add_operator("dashboard")
    store = Keys(tmp_path / "keys.json", reload_interval=0)
    assert operator.startswith("tgo_") and operator.split("_", 2)[2] not in (tmp_path / "keys.json").read_text()
    assert store.is_operator(operator) and not store.is_operator(device) and store.device_for(operator) is None
    assert not store.is_operator(operator[:-1] + ("x" if operator[-1] != "x" else "y"))
    assert not store.is_operator("tgo_unknown_secret") and not store.is_operator("tgo_")
    other = KeyStore(tmp_path / "keys.json")
    assert other.revoke_operator(operator.rsplit("_", 1)[0]) is not None
    assert not store.is_operator(operator), "another process's revocation is seen"
    assert store.device_for(device) == "dev-1", "device keys are kept"
    with pytest.raises(ValueError, match="name"):
        writer.add_operator(" ")


def test_keys_cli(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        command = [sys.executable, "-m", "tidegate", "keys", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    lines = run("add", "a", "b").splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    assert len(run("list").splitlines()) == 2
    assert "revoked a" in run("revoke", "a")
    assert [line.split()[0] for line in run("list").splitlines()] == ["b"]
