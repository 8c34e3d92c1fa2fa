"""Elasticsearch / OpenSearch sink: `_bulk` create actions, idempotent by event key."""

from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig

__all__ = ["ElasticsearchSinkConfig"]
