"""The Faust worker: normalization, dedupe and sink agents."""
