"""History records: a header with the payload's length and checksum, then the payload.

FAT has no journal, so a record cut short by a power loss must be recognised, never
trusted. A record is plain text up to its payload, readable with any pager:

    APPLIANCE-RECORD 1
    kind: runtime-log
    ended: killed by signal 11 (SIGSEGV)
    length: 1234
    sha256: 9f86d0...
    <blank line>
    <payload: exactly `length` bytes>
"""

from __future__ import annotations

MAGIC = b"APPLIANCE-RECORD 1\n"
MAX_HEADER = 4096


def sha256(data: bytes) -> str:
    import hashlib  # loads OpenSSL: only boots that archive or read a record pay for it
    return hashlib.sha256(data).hexdigest()


def encode(kind: str, payload: bytes, meta: dict[str, str] | None = None) -> bytes:
    lines = [f"kind: {kind}"]
    for key, value in (meta or {}).items():
        clean = " ".join(str(value).split())  # one line per field
        lines.append(f"{key}: {clean}")
    lines.append(f"length: {len(payload)}")
    lines.append(f"sha256: {sha256(payload)}")
    return MAGIC + ("\n".join(lines) + "\n\n").encode("utf-8", "replace") + payload


class Record:
    def __init__(self, meta: dict[str, str] | None = None, payload: bytes = b"", problem: str = "") -> None:
        self.meta = meta if meta is not None else {}
        self.payload = payload
        self.problem = problem  # empty when the record is whole and its checksum matches

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "unknown")


def check_length(head: bytes, size: int) -> str:
    """A problem with a record of ``size`` bytes whose first bytes are ``head`` (at least
    its header), or "": the header and the length it gives, without reading the payload
    or hashing it (the init checks the history this way at every archiving)."""
    if not head.startswith(MAGIC):
        return "not a history record (bad magic)"
    end = head.find(b"\n\n", len(MAGIC), MAX_HEADER)
    if end < 0:
        return "torn record: header incomplete"
    for line in head[len(MAGIC):end].split(b"\n"):
        if line.startswith(b"length: "):
            value = line[8:].strip()
            if not value.isdigit() or len(value) > 12:
                break
            present = size - end - 2
            if present < int(value):
                return f"torn record: {present} of {int(value)} bytes present"
            if present > int(value):
                return f"corrupt record: {present - int(value)} bytes beyond its length"
            return ""
    return "corrupt record: no valid length"


def decode(data: bytes) -> Record:
    """Parse a record; a torn or corrupt one comes back with ``problem`` saying how."""
    if not data.startswith(MAGIC):
        return Record(problem="not a history record (bad magic)", payload=data)
    end = data.find(b"\n\n", len(MAGIC), MAX_HEADER)
    if end < 0:
        return Record(problem="torn record: header incomplete", payload=data[len(MAGIC):])
    meta = {}
    for line in data[len(MAGIC):end].decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            meta[key] = value
    payload = data[end + 2:]
    try:
        length = int(meta.get("length", ""))
    except ValueError:
        return Record(meta, payload, "corrupt record: no valid length")
    if len(payload) < length:
        return Record(meta, payload, f"torn record: {len(payload)} of {length} bytes present")
    if len(payload) > length:
        return Record(meta, payload, f"corrupt record: {len(payload) - length} bytes beyond its length")
    if sha256(payload) != meta.get("sha256"):
        return Record(meta, payload, "corrupt record: checksum mismatch")
    return Record(meta, payload)
