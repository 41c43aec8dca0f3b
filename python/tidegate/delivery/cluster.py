"""What the Kafka cluster says about itself: whether it can be reached, and which configured topics it lacks.

`ClusterCheck` asks the brokers for the list of topics at start and then every `interval_s` (a metadata request
for all topics, which never auto-creates one). It never stops the service: the spool absorbs traffic while Kafka
is unreachable or a topic is missing. It makes both loud instead: an error log naming each missing topic and how
to create it (once per change, not every check), the `tidegate_kafka_*` metrics and the /health/ready checks, and,
with `ready_requires_kafka`, readiness itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaClient  # type: ignore[import-untyped,unused-ignore]

from tidegate.delivery.kafka import KafkaSettings

__all__ = ["ClusterCheck"]

log = logging.getLogger(__name__)


class ClusterCheck:
    """``reachable`` is None until the first answer (or failure), then whether the last check reached a broker;
    ``missing`` the configured topics the cluster did not list at the last successful check."""

    def __init__(self, settings: KafkaSettings, topics: Sequence[str], interval_s: float) -> None:
        self.settings = settings
        self.topics = tuple(dict.fromkeys(topics))
        self.interval_s = interval_s
        self.reachable: bool | None = None
        self.missing: tuple[str, ...] = ()
        self.last_error: str | None = None
        self.checks = 0
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One check: lists the cluster's topics and updates the state (logging what changed)."""
        client = AIOKafkaClient(
            bootstrap_servers=self.settings.bootstrap,
            client_id=self.settings.client_id,
            request_timeout_ms=self.settings.request_timeout_ms,
            **self.settings.connection_options,
        )
        try:
            await asyncio.wait_for(client.bootstrap(), self.settings.send_deadline_s)
            existing = client.cluster.topics()
        except Exception as error:  # unreachable, refused authentication, a TLS failure: all mean "not reachable"
            text = str(error)
            self._unreachable(text if type(error).__name__ in text else f"{type(error).__name__}: {text}")
            return
        finally:
            with contextlib.suppress(Exception):
                await client.close()
            self.checks += 1
        if self.reachable is not True:
            log.info("kafka reachable at %s", self.settings.bootstrap)
        self.reachable, self.last_error = True, None
        missing = tuple(topic for topic in self.topics if topic not in existing)
        if missing != self.missing:
            for topic in missing:
                log.error(
                    "kafka topic %r does not exist on %s: delivery stalls (records wait in the spool) until it "
                    "does. Create it, e.g. kafka-topics.sh --bootstrap-server %s --create --topic %s --partitions N "
                    "--replication-factor 3 (or enable auto.create.topics.enable on the brokers)",
                    topic,
                    self.settings.bootstrap,
                    self.settings.bootstrap,
                    topic,
                )
            if not missing:
                log.info("kafka topics all present: %s", ", ".join(self.topics))
        self.missing = missing

    def _unreachable(self, error: str) -> None:
        if self.reachable is not False:
            log.error(
                "kafka unreachable at %s: %s (the spool keeps every record meanwhile)", self.settings.bootstrap, error
            )
        self.reachable, self.last_error = False, error

    async def start(self) -> None:
        """Checks now and then every `interval_s`, in the background (a broker that does not answer never delays
        the service's start)."""
        self._task = asyncio.create_task(self._run(), name="tidegate-kafka-cluster-check")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)
