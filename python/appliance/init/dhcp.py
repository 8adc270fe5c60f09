"""DHCPv4 messages (RFC 2131, 2132): built for a client, and parsed with bounds on
everything, since any machine on the link may answer."""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

CLIENT_PORT, SERVER_PORT = 68, 67
MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # op ... file, then the magic cookie
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7
BROADCAST_FLAG = 0x8000  # ask the server to broadcast its answer: we have no address yet

OPT_PAD, OPT_END = 0, 255
OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_NTP = 1, 3, 6, 12, 42
OPT_REQUESTED_IP, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID, OPT_PARAMS = 50, 51, 53, 54, 55
OPT_T1, OPT_T2, OPT_CLIENT_ID = 58, 59, 61
PARAMS = bytes([OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_T1, OPT_T2, OPT_NTP])


class Reply(NamedTuple):
    kind: int  # OFFER, ACK, NAK
    xid: int
    address: str  # yiaddr
    prefix: int
    routers: tuple[str, ...]
    dns: tuple[str, ...]
    server: str
    lease: int  # seconds
    t1: int
    t2: int
    ntp: tuple[str, ...] = ()  # time servers (option 42): the clock's source


def request(kind: int, xid: int, mac: bytes, hostname: str = "", requested: str = "", server: str = "",
            ciaddr: str = "") -> bytes:
    """A DISCOVER, REQUEST or RELEASE from the client with hardware address ``mac``."""
    header = HEADER.pack(BOOTREQUEST, 1, 6, 0, xid, 0, 0 if ciaddr else BROADCAST_FLAG,
                         _ip(ciaddr), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")
    opts = bytes([OPT_TYPE, 1, kind]) + bytes([OPT_CLIENT_ID, 7, 1]) + mac
    if requested:
        opts += bytes([OPT_REQUESTED_IP, 4]) + _ip(requested)
    if server:
        opts += bytes([OPT_SERVER_ID, 4]) + _ip(server)
    if hostname:
        name = hostname.encode()[:63]
        opts += bytes([OPT_HOSTNAME, len(name)]) + name
    opts += bytes([OPT_PARAMS, len(PARAMS)]) + PARAMS + bytes([OPT_END])
    return header + MAGIC + opts


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed if text else bytes(4)


def options(data: bytes) -> dict[int, bytes]:
    """The options after the cookie; a truncated option ends the list."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            break
        out.setdefault(code, data[i + 2:i + 2 + data[i + 1]])  # the first of a repeated option
        i += 2 + data[i + 1]
    return out


def _addresses(raw: bytes | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(str(ipaddress.IPv4Address(raw[i:i + 4])) for i in range(0, len(raw) - len(raw) % 4, 4))


def _seconds(raw: bytes | None, default: int) -> int:
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else default


def parse(packet: bytes, xid: int, mac: bytes) -> Reply | None:
    """A server's answer to us (our xid and hardware address), or None for anything else."""
    if len(packet) < HEADER.size + len(MAGIC) or packet[HEADER.size:HEADER.size + 4] != MAGIC:
        return None
    op, _, hlen, _, got_xid, _, _, _, yiaddr, _, _, chaddr, _, _ = HEADER.unpack_from(packet)
    if op != BOOTREPLY or got_xid != xid or hlen != 6 or chaddr[:6] != mac:
        return None
    opts = options(packet[HEADER.size + 4:])
    kind = opts.get(OPT_TYPE, b"\0")[0] if opts.get(OPT_TYPE) else 0
    if kind not in (OFFER, ACK, NAK):
        return None
    mask = opts.get(OPT_SUBNET)
    try:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{ipaddress.IPv4Address(mask)}").prefixlen if mask and \
            len(mask) == 4 else 24
    except ValueError:  # a mask with holes
        prefix = 24
    lease = _seconds(opts.get(OPT_LEASE), 3600)
    lease = max(lease, 10)  # a lease of a few seconds would make the client spin
    server = opts.get(OPT_SERVER_ID)
    return Reply(kind, got_xid, str(ipaddress.IPv4Address(yiaddr)), prefix, _addresses(opts.get(OPT_ROUTER))[:4],
                 _addresses(opts.get(OPT_DNS))[:3], str(ipaddress.IPv4Address(server)) if server and
                 len(server) == 4 else "", lease, min(_seconds(opts.get(OPT_T1), lease // 2), lease),
                 min(_seconds(opts.get(OPT_T2), lease * 7 // 8), lease), _addresses(opts.get(OPT_NTP))[:3])
