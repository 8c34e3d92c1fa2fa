"""Backfill and reconciliation from Aha!'s REST API (`GET /api/v1/audits`) into the raw topic.

Aha! never retries a webhook, so an outage of the ingest loses audits at the source; the same
audits stay behind the REST API for about 12 months. `aha-siem backfill` brings a time range back,
`aha-siem reconcile` keeps checking a recent settled window and injects only what is missing.
"""
