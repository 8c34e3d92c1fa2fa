"""Kafka sink: events produced to a topic on this cluster or another one."""

from forwarder.sinks.kafka.config import KafkaSinkConfig

__all__ = ["KafkaSinkConfig"]
