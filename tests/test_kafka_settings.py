"""Kafka as operators configure it: settings → the producer's options, readiness and the topic check.

The test broker (tansu) speaks neither TLS nor SASL, so those are tested up to the options the producer is built
with (and that aiokafka accepts them); topics, readiness and reachability run against real servers.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tidegate.config import load_settings
from tidegate.delivery.kafka import kafka_settings, producer_kwargs
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.processes import free_port
from tidegate.testing.server import Server

from tests.conftest import reading


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate (it serves as the CA and as the client certificate) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def producer_options(env: dict[str, str]) -> dict[str, Any]:
    """The producer's keyword arguments for `TIDEGATE_*` settings; aiokafka must accept them."""
    kwargs = producer_kwargs(kafka_settings(load_settings(env={"TIDEGATE_KAFKA": "k1:9093,k2:9093", **env})))

    async def construct() -> None:
        AIOKafkaProducer(**kwargs)  # validates protocol, mechanism and credentials; connects only on start()

    asyncio.run(construct())
    return kwargs


def test_defaults_plaintext_acks_all_uncompressed() -> None:
    kwargs = producer_options({})
    assert kwargs["bootstrap_servers"] == "k1:9093,k2:9093"
    assert (kwargs["security_protocol"], kwargs["acks"]) == ("PLAINTEXT", "all")
    assert "ssl_context" not in kwargs and "sasl_mechanism" not in kwargs
    settings = kafka_settings(load_settings(env={"TIDEGATE_KAFKA": "k1:9093"}))
    # One record limit for the validators and the forwarder: what the broker takes, at most the validator's own.
    assert (settings.max_batch_bytes, settings.max_record_bytes, settings.linger_s) == (1 << 20, 1_000_000, 0.005)


def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path) -> None:
    ca, _ = self_signed(tmp_path, "tidegate-test-ca")
    cert, key = self_signed(tmp_path, "tidegate-client")
    env = {
        "TIDEGATE_KAFKA_TLS_CA_FILE": str(ca),
        "TIDEGATE_KAFKA_TLS_CERT_FILE": str(cert),
        "TIDEGATE_KAFKA_TLS_KEY_FILE": str(key),
    }
    kwargs = producer_options(env)
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert kwargs["security_protocol"] == "SSL"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    (authority,) = context.get_ca_certs()  # the brokers are verified against the given CA only
    assert "tidegate-test-ca" in str(authority["subject"])
    relaxed = producer_options({**env, "TIDEGATE_KAFKA_TLS_CHECK_HOSTNAME": "false"})
    assert relaxed["ssl_context"].check_hostname is False
    system = producer_options({"TIDEGATE_KAFKA_TLS": "true"})["ssl_context"]
    assert system.verify_mode == ssl.CERT_REQUIRED, "TLS without a CA file verifies against the system's CAs"
    with pytest.raises(ValueError, match="cannot be loaded"):
        producer_options({**env, "TIDEGATE_KAFKA_TLS_KEY_FILE": str(self_signed(tmp_path, "other")[1])})


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_and_in_plain_text(mechanism: str) -> None:
    credentials = {
        "TIDEGATE_KAFKA_SASL_MECHANISM": mechanism,
        "TIDEGATE_KAFKA_SASL_USERNAME": "fleet",
        "TIDEGATE_KAFKA_SASL_PASSWORD": "s3cret",
    }
    over_tls = producer_options({**credentials, "TIDEGATE_KAFKA_TLS": "true"})
    assert over_tls["security_protocol"] == "SASL_SSL" and isinstance(over_tls["ssl_context"], ssl.SSLContext)
    sasl = {key: over_tls[key] for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password")}
    assert sasl == {"sasl_mechanism": mechanism, "sasl_plain_username": "fleet", "sasl_plain_password": "s3cret"}
    plain = producer_options(credentials)
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in plain


def test_acks_compression_linger_and_request_size() -> None:
    kwargs = producer_options(
        {
            "TIDEGATE_KAFKA_ACKS": "1",
            "TIDEGATE_KAFKA_COMPRESSION": "zstd",
            "TIDEGATE_KAFKA_MAX_REQUEST_BYTES": str(4 << 20),
        }
    )
    assert (kwargs["acks"], kwargs["max_batch_size"]) == (1, 4 << 20)
    assert kwargs["max_request_size"] >= 4 << 20
    # The forwarder compresses natively: the producer itself is not asked to (nor to have a codec library).
    assert "compression_type" not in kwargs
    env = {"TIDEGATE_KAFKA": "k:9092", "TIDEGATE_KAFKA_LINGER_MS": "20", "TIDEGATE_KAFKA_COMPRESSION": "zstd"}
    settings = kafka_settings(load_settings(env=env))
    assert (settings.linger_s, settings.compression_type) == (0.02, "zstd")


def test_kafka_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kafka_sasl_password"):
        producer_options({"TIDEGATE_KAFKA_SASL_MECHANISM": "PLAIN", "TIDEGATE_KAFKA_SASL_USERNAME": "fleet"})
    with pytest.raises(ValueError, match="kafka_tls_cert_file"):
        producer_options({"TIDEGATE_KAFKA_TLS_KEY_FILE": str(self_signed(tmp_path, "lonely")[1])})
    with pytest.raises(ValueError, match="kafka_tls_ca_file: no such file"):
        producer_options({"TIDEGATE_KAFKA_TLS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ValueError, match="kafka_acks must be one of all, 1"):
        producer_options({"TIDEGATE_KAFKA_ACKS": "0"})

    def serve(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tidegate", "serve", "--data-dir", str(tmp_path / "data"), *flags]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    refused = serve("--kafka", "k:9092", "--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "u")
    assert refused.returncode == 2 and "kafka_sasl_password" in refused.stderr, refused.stderr
    refused = serve("--ready-requires-kafka")
    assert refused.returncode == 2 and "ready_requires_kafka needs kafka" in refused.stderr, refused.stderr
    assert not (tmp_path / "data").exists(), "refused before anything started"


# ----- against real servers


def poll(url: str, until: Callable[[dict[str, Any]], bool]) -> httpx.Response:
    """GET /health/ready until `until(checks)` holds; fails the test after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(url + "/health/ready", timeout=10)
        if until(response.json().get("checks", {})) or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_readiness_when_kafka_cannot_be_reached(tmp_path: Path) -> None:
    unreachable = {"TIDEGATE_AUTH": "false", "TIDEGATE_KAFKA": f"127.0.0.1:{free_port()}"}
    with Server(tmp_path / "default", unreachable) as tolerant:
        response = poll(tolerant.url, lambda checks: checks.get("kafka_reachable") is False)
        assert response.status_code == 200, "by default the spool absorbs traffic while Kafka is down"
        assert response.json()["checks"]["kafka_required"] is False
        answer = httpx.post(tolerant.url + "/api/v1/ingest", json=reading("unreachable-1"), timeout=10)
        assert answer.status_code == 202 and answer.headers["x-durability"] == "spool"
        assert metric(tolerant.url, "tidegate_kafka_reachable") == 0

    strict = Server(tmp_path / "strict", {**unreachable, "TIDEGATE_READY_REQUIRES_KAFKA": "true"})
    strict.start(until="/health/live")
    try:
        response = poll(strict.url, lambda checks: checks.get("kafka_reachable") is False)
        assert response.status_code == 503, "ready_requires_kafka: not ready while Kafka cannot be reached"
        assert response.json()["status"] == "not_ready" and response.json()["checks"]["kafka_required"] is True
        assert metric(strict.url, "tidegate_ready") == 0
        answer = httpx.post(strict.url + "/api/v1/ingest", json=reading("unreachable-2"), timeout=10)
        assert answer.status_code == 503 and answer.headers["retry-after"]
    finally:
        strict.stop()


def test_topics_from_settings_missing_ones_are_loud_until_created(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        broker.create_topics(["fleet-telemetry"], partitions=2)
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_KAFKA": broker.bootstrap,
            "TIDEGATE_KAFKA_TOPIC_TELEMETRY": "fleet-telemetry",
            "TIDEGATE_KAFKA_TOPIC_EVENTS": "fleet-events",
            "TIDEGATE_KAFKA_TOPIC_DEAD_LETTER": "fleet-dlq",
            "TIDEGATE_KAFKA_TOPIC_DEVICE_ALERTS": "fleet-alerts",
            "TIDEGATE_KAFKA_TOPIC_CHECK_INTERVAL_S": "0.2",
            "TIDEGATE_READY_REQUIRES_KAFKA": "true",
        }
        with Server(tmp_path / "server", env) as server:  # ready: Kafka is reachable
            response = poll(server.url, lambda checks: checks.get("kafka_reachable") is True)
            assert response.status_code == 200, "missing topics are loud, but the spool absorbs their records"
            assert response.json()["checks"]["kafka_topics_missing"] == ["fleet-events", "fleet-dlq", "fleet-alerts"]
            assert metric(server.url, "tidegate_kafka_topics_missing") == 3
            log = server.log_tail(200)
            assert "kafka topic 'fleet-events' does not exist" in log and "--create --topic fleet-dlq" in log, log

            answer = httpx.post(
                server.url + "/api/v1/ingest", json=reading("topics-1"), headers={"X-Ack": "kafka"}, timeout=30
            )
            assert answer.status_code == 202 and answer.headers["x-durability"] == "kafka"
            records = asyncio.run(consume_all(broker.bootstrap, "fleet-telemetry", expected=1, timeout=20))
            assert [json.loads(r.value)["event_id"] for r in records] == [answer.json()["event_id"]]

            broker.create_topics(["fleet-events", "fleet-dlq", "fleet-alerts"], partitions=1)
            response = poll(server.url, lambda checks: checks.get("kafka_topics_missing") == [])
            assert response.json()["checks"]["kafka_topics_missing"] == []
            assert metric(server.url, "tidegate_kafka_topics_missing") == 0
