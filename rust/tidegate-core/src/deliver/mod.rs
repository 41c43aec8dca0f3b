//! Delivery to Kafka: the Kafka v2 record batches the delivery process produces, encoded natively.

pub mod kafka;
