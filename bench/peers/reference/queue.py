"""Message queue producer: aiokafka."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]


class QueueProducer:
    def __init__(self, brokers: str) -> None:
        self.brokers = brokers
        self._producer = AIOKafkaProducer(bootstrap_servers=brokers, enable_idempotence=False)
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._producer.stop()

    async def is_connected(self) -> bool:
        return self._started and bool(self._producer.client.cluster.brokers())

    async def send(self, topic: str, key: str, value: str) -> None:
        # Enqueued in the Kafka producer's batch; the broker's acknowledgement is not awaited ("accept fast").
        await self._producer.send(topic, key=key.encode(), value=value.encode())
