"""aha-siem-forwarder: Aha! Roadmaps audit webhooks to SIEMs through Kafka."""

__version__ = "0.1.0"
