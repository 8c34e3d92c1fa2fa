"""The pure core: normalization, rich text, users, dedupe, window merge and the batch processor.

Nothing here imports Faust or mode (tests/unit/core/test_no_faust.py checks it), so `render`,
`backfill` and the unit tests use it without the stream runtime, and the Faust worker
(forwarder/pipeline/) only wires topics, tables and timers to `processor.Processor`.
"""
