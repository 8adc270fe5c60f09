"""SNTP (RFC 4330): one request to a time server, its answer checked before it is believed.

Whatever comes back is hostile: the answer is read once (at most 512 bytes, within the
timeout), must come from the server asked, be a server's answer to this request (our
transmit time echoed as its originate time), from a synchronised server (stratum 1-15,
no leap alarm), with a transmit time that is not zero. Runs in the network thread.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

PORT = 123
NTP_UNIX = 2208988800  # seconds from 1900 (NTP's era 0) to 1970
PACKET = struct.Struct("!BBbb4s4s4s8s8s8s8s")  # LI/VN/mode, stratum, poll, precision, ... transmit
MODE_CLIENT, MODE_SERVER = 3, 4


class SntpError(Exception):
    pass


class Sample(NamedTuple):
    server: str
    stratum: int
    offset: float  # seconds to add to the local clock
    delay: float  # the round trip, less the server's own time


def to_ntp(t: float) -> bytes:
    seconds = int(t) + NTP_UNIX
    return struct.pack("!II", seconds & 0xFFFFFFFF, int((t % 1) * (1 << 32)) & 0xFFFFFFFF)


def from_ntp(raw: bytes) -> float:
    seconds, fraction = struct.unpack("!II", raw)
    if seconds < 0x80000000:  # era 1 (after 2036-02-07): the top bit clear again
        seconds += 1 << 32
    return float(seconds - NTP_UNIX + fraction / (1 << 32))


def request(t: float) -> bytes:
    return PACKET.pack(4 << 3 | MODE_CLIENT, 0, 0, 0, bytes(4), bytes(4), bytes(4), bytes(8), bytes(8), bytes(8),
                       to_ntp(t))


def parse(data: bytes, sent: bytes, t1: float, t4: float, server: str = "") -> Sample:
    """The sample an answer gives to the request whose transmit field was ``sent`` (at ``t1``,
    the answer read at ``t4``); SntpError saying why it is not believed."""
    if len(data) < PACKET.size:
        raise SntpError(f"a short answer ({len(data)} bytes)")
    first, stratum, _, _, _, _, _, _, originate, received, transmit = PACKET.unpack_from(data)
    leap, version, mode = first >> 6, first >> 3 & 7, first & 7
    if mode != MODE_SERVER or not 1 <= version <= 4:
        raise SntpError(f"not a server's answer (mode {mode}, version {version})")
    if originate != sent:
        raise SntpError("an answer to another request")
    if leap == 3 or not 1 <= stratum <= 15:
        raise SntpError(f"the server is not synchronised (leap {leap}, stratum {stratum})")
    if transmit == bytes(8) or received == bytes(8):
        raise SntpError("an answer without its times")
    t2, t3 = from_ntp(received), from_ntp(transmit)
    delay = (t4 - t1) - (t3 - t2)
    if not -1.0 <= delay <= 10.0:
        raise SntpError(f"an implausible round trip ({delay:.3f} s)")
    return Sample(server, stratum, ((t2 - t1) + (t3 - t4)) / 2, max(delay, 0.0))


def query(server: str, port: int = PORT, timeout: float = 2.0,
          now: Callable[[], float] = time.time) -> Sample:
    """One exchange with ``server`` (an IPv4 address); SntpError or OSError when it fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((server, port))  # the kernel drops datagrams from anyone else
        t1 = now()
        packet = request(t1)
        s.send(packet)
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = s.recv(512)
            except TimeoutError:
                raise SntpError(f"no answer within {timeout:g} s") from None
            t4 = now()
            try:
                return parse(data, packet[40:48], t1, t4, server)
            except SntpError:
                if time.monotonic() >= deadline:
                    raise


def parse_server(text: str) -> tuple[str, int]:
    """``10.0.2.2`` or ``10.0.2.2:11123`` (an IPv4 address: no DNS at this point)."""
    import ipaddress
    host, sep, port = text.partition(":")
    ipaddress.IPv4Address(host)  # ValueError for a name or garbage
    if not sep:
        return host, PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: not a port")
    return host, int(port)
