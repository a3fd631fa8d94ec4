"""The paced producer of ``max_sources_1hz`` (:mod:`bench.sources`), in its own process, and its driver.

``python -m bench.sources_driver --bootstrap H:P --topic T --warmup W --jump J`` plays N sources, one
record per source per second, from simulated traffic; :class:`Driver` starts it and talks to it over
stdin/stdout. A process of its own: tens of thousands of sends a second must not compete for one
GIL with the benchmark's sampling and scraping threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from bench.common import REPO, child_env, trace_lines

__all__ = ["TEMPLATE_SOURCES", "Driver", "main"]

TEMPLATE_SOURCES = 20


def _templates(n: int, minutes: float, seed: int) -> list[list[Any]]:
    """Per simulated source, its metrics objects second by second."""
    per: dict[str, list[Any]] = {}
    for line in trace_lines(n, minutes, seed=seed):
        obj = orjson.loads(line)
        per.setdefault(obj["source"], []).append(obj["metrics"])
    return list(per.values())


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.sources_driver --bootstrap H:P --topic T --warmup W --jump J``: play sources.

    stdin, one command a line: ``gen N`` stops the sources playing and sends, at once, ``W`` records
    for each of ``N`` new ones (record time ``J`` s past the last record sent, so the old sources
    are idle by record time there and the daemon forgets them); ``go`` starts pacing them, one
    record per source per second, spread over the second; ``stop`` (or EOF) ends.
    stdout: a JSON progress line every 0.1 s (``t`` monotonic, ``gen`` generations started (once
    its warm-up is sent), ``n`` sources pacing, ``sent``,
    ``failed``, ``behind_s`` the most a paced record was sent after it was due since the last line,
    ``cpu`` seconds of this process), and a last one with ``"done": true``.
    """
    import queue

    from netsiam.config import KafkaConfig
    from netsiam.producer import producer_factory

    ap = argparse.ArgumentParser(prog="python -m bench.sources_driver")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--warmup", type=int, required=True, help="records a new source sends at once (T - 1)")
    ap.add_argument("--jump", type=float, required=True, help="record-time seconds between generations")
    ap.add_argument("--client", default="confluent-kafka")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    tmpl = _templates(TEMPLATE_SOURCES, 10, args.seed)
    period = len(tmpl[0])
    # linger: a few records per partition and request; 20 ms is nothing beside the 2 s lag bound
    producer = producer_factory(KafkaConfig(client=args.client), args.bootstrap, linger_ms=20,
                                max_block_ms=10_000, errors_only=True)()
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")

    threading.Thread(target=read_commands, daemon=True).start()
    failed = [0]

    def on_delivery(exc: BaseException | None) -> None:  # errors_only: failures only
        failed[0] += 1

    state = {"sent": 0, "behind": 0.0, "last_report": 0.0, "gen": 0}
    names: list[str] = []
    keys: list[bytes] = []

    def send(i: int, ts: float, k: int) -> None:
        metrics = tmpl[i % len(tmpl)][(k + 37 * i) % period]
        producer.send(args.topic, keys[i], orjson.dumps({"source": names[i], "ts": ts, "metrics": metrics}),
                      on_delivery)
        state["sent"] += 1

    def report(n: int, done: bool = False) -> None:
        state["last_report"] = now = time.monotonic()
        line = {"t": round(now, 4), "gen": state["gen"], "n": n, "sent": state["sent"], "failed": failed[0],
                "behind_s": round(state["behind"], 4), "cpu": round(time.process_time(), 3)}
        print(json.dumps({**line, "done": True} if done else line), flush=True)
        state["behind"] = 0.0

    base = float(math.floor(time.time()))  # record time of the generation's first second
    n = 0            # sources pacing
    k = 0            # the generation's second being paced (its records have ts base + k)
    j = 0            # records of second k sent so far
    start = 0.0      # monotonic time second ``warmup`` (the first paced one) is due
    while True:
        try:
            cmd = commands.get(timeout=0.005 if n else 0.1)
        except queue.Empty:
            cmd = ""
        if cmd == "stop":
            break
        if cmd.startswith("gen "):
            size = int(cmd.split()[1])
            base += k + args.jump if state["gen"] else 0
            n, k, j = 0, args.warmup, 0
            state["gen"] += 1
            names = [f"bench-g{state['gen']}-{i:06d}" for i in range(size)]
            keys = [x.encode() for x in names]
            for w in range(args.warmup):  # in time order, as a fleet would have sent them
                for i in range(size):
                    send(i, base + w, w)
                producer.poll(0)
            producer.flush(30)
        elif cmd == "go":
            n, start = len(names), time.monotonic()
        now = time.monotonic()
        while n:  # every paced record due by now: one per source per second, spread over the second
            sec = start + (k - args.warmup)
            if now < sec:
                break
            due = min(n, int((now - sec) * n) + 1)
            if j < due:
                state["behind"] = max(state["behind"], now - (sec + j / n))
                for i in range(j, due):
                    send(i, base + k, k)
                j = due
            if j < n:
                break
            k, j = k + 1, 0
        producer.poll(0)
        if now - state["last_report"] >= 0.1:
            report(n)
    producer.close(10)
    report(n, done=True)
    return 0


class Driver:
    """The producer process: commands in, progress lines out (read on a thread)."""

    def __init__(self, bootstrap: str, topic: str, warmup: int, jump_s: float, client: str, log: Path) -> None:
        from bench.e2e import _die_with_parent

        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sources_driver", "--bootstrap", bootstrap, "--topic", topic,
             "--warmup", str(warmup), "--jump", str(jump_s), "--client", client],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=child_env(), cwd=REPO,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self._lock = threading.Lock()
        self.last: dict[str, Any] = {}
        self._behind = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                with self._lock:
                    self.last = obj
                    self._behind = max(self._behind, float(obj.get("behind_s", 0.0)))

    def take(self) -> tuple[dict[str, Any], float]:
        """The latest progress line, and the most a record was late since the last call."""
        with self._lock:
            last, behind, self._behind = dict(self.last), self._behind, 0.0
        return last, behind

    def command(self, line: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(f"{line}\n")
        stdin.flush()

    def close(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """Stop playing (the driver flushes), wait for it; its last progress line."""
        with contextlib.suppress(OSError, ValueError):
            stdin = self.proc.stdin
            assert stdin is not None
            stdin.write("stop\n")
            stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._log.close()
        return self.last


if __name__ == "__main__":
    raise SystemExit(main())
