"""SIP packet captures (pcap / pcapng) -> per-interval signalling records, via tshark.

tshark decodes the SIP messages (:func:`read_sip_messages`); :mod:`netsiam.importers.sipcount`
counts them per receiving element and interval (its docstring lists every metric). A record is
emitted for every interval from the element's first INVITE to its last message, zeros for quiet
ones; ``ts`` is the END of the interval, as with SIPp's ``CurrentTime``. ``netsiam collect pcap``
runs the same tshark fields on a live interface (:func:`tshark_fields_args`, :func:`parse_line`)
into the same counter.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from netsiam.errors import NetsiamError
from netsiam.importers.sipcount import INVITE_TIMEOUT_S, SipMessage, records_from_messages
from netsiam.traceio import Record

__all__ = [
    "INVITE_TIMEOUT_S", "SipMessage", "import_pcap", "parse_line", "read_sip_messages", "records_from_messages",
    "tshark_fields_args",
]
_FIELDS = (
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "udp.dstport",
    "tcp.dstport",
    "sip.Method",
    "sip.Status-Code",
    "sip.CSeq.method",
    "sip.CSeq.seq",
    "sip.Call-ID",
)


def import_pcap(
    path: str | os.PathLike[str], interval_s: float = 1.0, sip_ports: Sequence[int] = ()
) -> list[Record]:
    """Records for every element that receives INVITEs in the capture, sorted by (ts, source).

    ``sip_ports``: extra UDP/TCP ports to decode as SIP; 5060 and SIP's heuristic dissector
    (on, and tried before port-based dissectors) already cover SIPp and most testbeds.
    """
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise NetsiamError(f"import pcap: interval must be a positive number of seconds, got {interval_s}")
    messages = list(read_sip_messages(path, sip_ports))
    records = records_from_messages(messages, interval_s)
    if not records:
        raise NetsiamError(f"{path}: no SIP INVITE in the capture, nothing to import")
    return records


def read_sip_messages(path: str | os.PathLike[str], sip_ports: Sequence[int] = ()) -> Iterator[SipMessage]:
    """Run tshark over the capture and yield its SIP messages in capture order."""
    p = Path(path)
    tshark = shutil.which("tshark")
    if tshark is None:
        raise NetsiamError(
            "tshark not found on PATH; install it (Debian: apt-get install tshark) to import pcap"
        )
    if str(p) != "-" and not p.is_file():  # "-": tshark reads the capture from our standard input
        raise NetsiamError(f"{p}: {'a directory, not a capture file' if p.is_dir() else 'no such capture file'}")
    cmd = [tshark, "-r", str(p), *tshark_fields_args(sip_ports)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, errors="replace")
        assert proc.stdout is not None
        try:
            # A capture that is not SIP at all still parses: it simply yields nothing.
            yield from (m for line in proc.stdout if (m := parse_line(line)) is not None)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            reason = _tshark_reason(err.read())
            # A capture cut short (writer killed, or still capturing): keep what was readable.
            if "cut short in the middle of a packet" not in reason:
                raise NetsiamError(f"{p}: not a capture tshark can read ({reason})")


def tshark_fields_args(sip_ports: Sequence[int] = ()) -> list[str]:
    """tshark options that print one line of SIP fields per message (:func:`parse_line` reads it)."""
    args = ["-n", "-Y", "sip", "-T", "fields", "-E", "occurrence=f"]
    args += ["--enable-heuristic", "sip_udp", "--enable-heuristic", "sip_tcp"]
    # Heuristics before port tables: SIP on a port Wireshark gives to another protocol (44818 is
    # EtherNet/IP, 54328 Elasticsearch, ...) would otherwise be decoded as that protocol and vanish.
    args += ["-o", "udp.try_heuristic_first:TRUE", "-o", "tcp.try_heuristic_first:TRUE"]
    for port in sip_ports:
        args += ["-d", f"udp.port=={int(port)},sip", "-d", f"tcp.port=={int(port)},sip"]
    for f in _FIELDS:
        args += ["-e", f]
    return args


def _tshark_reason(stderr: bytes) -> str:
    lines = [
        ln.strip()
        for ln in stderr.decode(errors="replace").splitlines()
        if ln.strip() and not ln.startswith("Running as user")
    ]
    return lines[0] if lines else "tshark failed"


def _endpoint(ip4: str, ip6: str, udp: str, tcp: str) -> str:
    port = udp or tcp
    if ip4:
        return f"{ip4}:{port}"
    return f"[{ip6}]:{port}" if ip6 else f"?:{port}"


def parse_line(line: str) -> SipMessage | None:
    """One line of :func:`tshark_fields_args` output -> a message (None: not a complete SIP message)."""
    f = line.rstrip("\n").split("\t")
    if len(f) < len(_FIELDS):
        return None
    t, s4, s6, sudp, stcp, d4, d6, dudp, dtcp, method, status, cmethod, cseq, call_id = f[: len(_FIELDS)]
    if not call_id or not (method or status):
        return None  # not a complete SIP message (e.g. a TCP segment without headers)
    try:
        return SipMessage(
            time=float(t),
            src=_endpoint(s4, s6, sudp, stcp),
            dst=_endpoint(d4, d6, dudp, dtcp),
            method=method.upper(),
            status=int(status) if status else 0,
            cseq_method=cmethod.upper(),
            cseq_seq=int(cseq) if cseq else 0,
            call_id=call_id,
        )
    except ValueError:
        return None
