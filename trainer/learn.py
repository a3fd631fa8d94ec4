"""``netsiam learn``: apply feedback messages from ``netsiam.feedback`` to the model the daemon serves.

A small service beside ``netsiam detect`` (which never imports the trainer): a UI, a chat bot or
``kafka-console-producer`` sends ``{"event_id": ..., "label": ..., "by": ..., "note": ...}``; each message
goes through :func:`netsiam.trainer.feedback.teach` in offset order, and the daemon hot-reloads the new
version. A message that is not feedback, or that is refused (unknown event, too few windows, a label that
would swallow another class), goes to the dead-letter topic with the reason and changes nothing. The
offset is committed only once the message is applied or its dead letter acknowledged, so a crash
re-reads it; a feedback already in the model's lineage is not applied twice. SIGTERM/SIGINT: finish the
message at hand, commit, stop. With ``--metrics-port`` it serves ``/metrics`` (:mod:`.learnmetrics`): messages
read, applied by what they did, and dead-lettered by reason.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

from netsiam.config import Config
from netsiam.errors import NetsiamError, ServiceError
from netsiam.schemas.deadletter import DeadLetter
from netsiam.schemas.feedback import FeedbackError, parse_feedback
from netsiam.versions import writable_model

from .feedback import describe, teach
from .learnmetrics import LearnMetrics

__all__ = ["cli_learn", "handle"]

log = logging.getLogger("netsiam.learn")


def handle(msg: Any, cfg: Config, model: Any, bootstrap: str, metrics: LearnMetrics | None = None) -> DeadLetter | None:
    """Apply one feedback message (counted in ``metrics`` by what it did); the dead letter to publish if it is
    refused."""
    try:
        fb = parse_feedback(msg.value or b"")
    except FeedbackError as e:
        return DeadLetter(msg.topic, msg.partition, msg.offset, msg.timestamp, msg.key, msg.value, e.reason, str(e))
    try:
        out = teach(model, fb, cfg, bootstrap=bootstrap)
    except ServiceError:
        raise                       # the broker, not the message: retry it later
    except NetsiamError as e:
        log.warning("feedback refused (event %s, label %s): %s", fb.event_id, fb.label, e)
        return DeadLetter(msg.topic, msg.partition, msg.offset, msg.timestamp, msg.key, msg.value, "refused", str(e))
    log.info("%s", describe(out, model))
    if metrics is not None:
        metrics.applied.labels(action=out.action).inc()
        metrics.last_applied.set_to_current_time()
    return None


def cli_learn(args: argparse.Namespace, cfg: Config) -> int:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import KafkaError
    from prometheus_client import CollectorRegistry

    from netsiam.kafka_io import consumer_kwargs, producer_kwargs, quiet_kafka_logs
    from netsiam.metricsserver import serve_metrics
    from netsiam.sdnotify import Watchdog, notify

    model = writable_model(args.model or cfg.detector.model)
    bootstrap = args.bootstrap or cfg.kafka.bootstrap_servers
    topics = cfg.kafka.topics
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    quiet_kafka_logs()
    metrics = LearnMetrics(CollectorRegistry())
    with ExitStack() as stack:
        if args.metrics_port is not None:
            stack.enter_context(serve_metrics(metrics.registry, cfg.metrics.host, args.metrics_port, log))
        try:
            consumer = KafkaConsumer(topics.feedback, **{**consumer_kwargs(cfg.kafka, bootstrap,
                                                                            args.group or f"{cfg.kafka.group_id}-learn"),
                                                         "max_poll_records": 1})
            stack.callback(consumer.close)
            producer = KafkaProducer(**producer_kwargs(cfg.kafka, bootstrap))
            stack.callback(producer.close)
        except KafkaError as e:
            raise ServiceError(f"cannot reach the broker at {bootstrap}: {type(e).__name__}") from None
        log.info("learning from topic=%s into model=%s bootstrap=%s", topics.feedback, model, bootstrap)
        notify("READY=1", f"STATUS=learning from {topics.feedback} into {model}")
        watchdog = Watchdog()
        while not stop.is_set():
            watchdog.ping()
            for msgs in consumer.poll(500).values():
                for msg in msgs:
                    metrics.consumed.inc()
                    while True:
                        try:
                            dead = handle(msg, cfg, model, bootstrap, metrics)
                            if dead is not None:
                                producer.send(topics.deadletter, key=msg.key, value=dead.to_bytes(time.time())).get(30)
                                metrics.dead_letters.labels(reason=dead.reason).inc()
                            break
                        except (ServiceError, KafkaError) as e:   # broker away: the same message again
                            log.warning("feedback at offset %d waits for the broker: %s", msg.offset, e)
                            if stop.wait(2.0):
                                return 0
                    consumer.commit()
        notify("STOPPING=1")
    return 0
