"""This boot's runtime log on the ESP, and the previous boot's.

Every line carries its source (``core: `` for what the core wrote to stderr, ``init: ``
for what the init adds, such as how the core ended). The file is capped: its
beginning and its end are kept with a marker where it was cut, because the end is
where the crash is. The beginning is written as it arrives; once past half the cap,
the end is kept in memory and rewritten at each flush.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from appliance.esp.fsutil import fsync_dir, write_all

ENDED = b"init: core ended: "
NOT_RECORDED = "not recorded (power loss, kernel panic, hang, or a failure of the init)"


def cut_marker(cut: int, cap: int) -> bytes:
    return (f"\ninit: [... {cut} bytes cut here: the runtime log keeps its first and last "
            f"{cap // 2} bytes ...]\n").encode()


class Tagger:
    """Prefix every line of a byte stream with its source, across chunk boundaries."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.at_line_start = True

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return b""
        lines = data.split(b"\n")
        out = bytearray()
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break  # data ended with a newline
            if self.at_line_start:
                out += self.tag
            out += line
            if not last:
                out += b"\n"
                self.at_line_start = True
            else:
                self.at_line_start = False
        if data.endswith(b"\n"):
            self.at_line_start = True
        return bytes(out)


class RuntimeLog:
    """Appends to the file at ``path`` (created empty), capped at ``cap`` bytes."""

    def __init__(self, path: str, cap: int = 1 << 20, sync_all: Callable[[], None] | None = None) -> None:
        self.path = path
        self.cap = max(cap, 1024)
        self.head_limit = self.cap // 2
        self.tail_limit = self.cap - self.head_limit
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.fsync(self.fd)  # the new file's directory entry, before anything is written to it
        fsync_dir(os.path.dirname(path) or ".")
        self.head = 0  # bytes written to the head region
        self.tail = bytearray()
        self.cut = 0
        self.dirty = False
        self.tail_dirty = False
        self.core = Tagger(b"core: ")
        self.error: OSError | None = None  # the first write error; the log is then off
        # fsync writes the file and the FAT, but vfat rewrites FAT32's free-cluster hint
        # (FSInfo) only when the whole file system is synced: the init passes os.sync.
        self.sync_all = sync_all

    def _append(self, data: bytes) -> None:
        if self.error is not None or not data:
            return
        try:
            if self.head < self.head_limit:
                room = self.head_limit - self.head
                write_all(self.fd, data[:room])
                self.head += min(room, len(data))
                data = data[room:]
                self.dirty = True
            if data:
                self.tail += data
                if len(self.tail) > self.tail_limit:
                    drop = len(self.tail) - self.tail_limit
                    del self.tail[:drop]
                    self.cut += drop
                self.tail_dirty = True
        except OSError as e:
            self.error = e

    def core_output(self, data: bytes) -> None:
        self._append(self.core(data))

    def init_line(self, text: str) -> None:
        prefix = b"\n" if not self.core.at_line_start else b""
        self.core.at_line_start = True
        self._append(prefix + "".join(f"init: {line}\n" for line in text.splitlines()).encode("utf-8", "replace"))

    def flush(self) -> None:
        """Make what was written durable (called on a timer and at the end)."""
        if self.error is not None:
            return
        try:
            if self.tail_dirty:
                blob = (cut_marker(self.cut, self.cap) if self.cut else b"") + bytes(self.tail)
                os.pwrite(self.fd, blob, self.head)
                os.ftruncate(self.fd, self.head + len(blob))
                self.tail_dirty = False
                self.dirty = True
            if self.dirty:
                os.fsync(self.fd)
                if self.sync_all is not None:
                    self.sync_all()
                self.dirty = False
        except OSError as e:
            self.error = e

    def discard(self) -> None:
        """Empty the log: nothing worth reporting happened this boot."""
        try:
            os.ftruncate(self.fd, 0)
            os.fsync(self.fd)
        except OSError as e:
            self.error = self.error or e

    def close(self) -> None:
        self.flush()
        try:
            os.close(self.fd)
        except OSError:
            pass


def read_previous(path: str, cap: int) -> tuple[bytes, int]:
    """(content, total size) of the previous boot's log, reading at most about ``cap``
    bytes: a huge file (garbage, or written by something else) yields its beginning
    and end with a marker."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= cap:
            return f.read(cap), size
        half = cap // 2
        head = f.read(half)
        f.seek(size - half)
        tail = f.read(half)
    marker = (f"\ninit: [... {size - 2 * half} bytes of the previous log skipped: it is larger "
              f"than the cap of {cap} bytes ...]\n").encode()
    return head + marker + tail, size


def how_it_ended(content: bytes) -> str:
    """The init's record of how that boot's core ended, from the log's last such line."""
    pos = content.rfind(ENDED)
    if pos < 0:
        return NOT_RECORDED
    end = content.find(b"\n", pos)
    line = content[pos + len(ENDED): end if end >= 0 else len(content)]
    return line.decode("utf-8", "replace").strip() or NOT_RECORDED


def printable_lines(content: bytes, limit: int = 64 * 1024) -> list[str]:
    """Lines to show on the console: decoded, control characters escaped, and at most
    ``limit`` bytes (the end is kept: that is where the crash is)."""
    skipped = 0
    if len(content) > limit:
        skipped = len(content) - limit
        content = content[-limit:]
    text = content.decode("utf-8", "replace")
    out = []
    if skipped:
        out.append(f"[... {skipped} earlier bytes not shown here; the archived record has them ...]")
    for line in text.split("\n"):
        out.append("".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in line))
    if out and out[-1] == "":
        out.pop()
    return out
