"""Live input collectors (``netsiam collect sipp|pcap``) and ``netsiam dump``.

One job per module: :mod:`.statfollow` follows one SIPp statistics file like ``tail -F``,
:mod:`.sipp` turns the files of one source into records, :mod:`.pcap` counts a live SIP capture
with the importer's counter, :mod:`.sink` publishes with acks and a bounded buffer (or writes
JSON Lines), :mod:`.state` keeps what was published across restarts, :mod:`.metrics` holds the
``netsiam_collect_*`` metrics, :mod:`.dump` turns topics back into a trace and draft labels, and
:mod:`.cli` is the glue behind the verbs.
"""

__all__: list[str] = []
