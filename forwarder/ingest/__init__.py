"""The webhook ingest shim."""
