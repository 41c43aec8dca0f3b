"""Delivery: the durable spool (embedded default) and the Kafka forwarder that drains it."""
