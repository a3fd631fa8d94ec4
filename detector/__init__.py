"""The detector daemon (``netsiam detect``), one job per module: :mod:`.cli` (entry point), :mod:`.loop`
(poll, batch, backpressure, hot swap, housekeeping, readiness), :mod:`.pipeline` with :mod:`.sources`
and :mod:`.batch` (records -> windows -> embeddings -> events), :mod:`.outbox` and :mod:`.delivery`
(publishing until acknowledged; :mod:`.tansu` for the embedded broker's outages), :mod:`.offsets`
(commits, rewind markers, rebalance), :mod:`.reload`, :mod:`.metrics`, :mod:`.health`.
"""
