"""The console's lines to a syslog receiver as they happen (``make image SYSLOG=host:port``):
RFC 5424 messages over TCP, octet-counted (RFC 6587), sent by a thread of their own.

Every line the init says and every line of the core's stderr is queued with its time; while
the receiver is away the queue waits in bounded memory (the oldest lines go first, and
how many went is sent once it is back). Queuing is all that happens in PID 1's
supervising loop: it never waits for the network. Nothing is read from the receiver.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable

MAX_LINES = 4000
MAX_BYTES = 1 << 20
MAX_LINE = 4096  # bytes of one line (a longer one is cut)
CONNECT_TIMEOUT, SEND_TIMEOUT = 5.0, 10.0
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
FACILITY_USER, FACILITY_DAEMON = 1, 3
SEVERITY = {"init": 6, "core": 3}  # the init's lines are information; the core's are its stderr


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def frame(t: float, host: str, app: str, procid: str, text: str) -> bytes:
    """One octet-counted RFC 5424 message."""
    pri = (FACILITY_DAEMON if app == "init" else FACILITY_USER) * 8 + SEVERITY.get(app, 6)
    message = f"<{pri}>1 {rfc3339(t)} {host or '-'} {app} {procid or '-'} - - {text}".encode("utf-8", "replace")
    return b"%d %s" % (len(message), message)


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"SYSLOG={text!r}: host:port expected (TCP, RFC 5424)")
    return host.strip("[]"), int(port)


class Forwarder:
    def __init__(self, target: str, host: str, say: Callable[[str], None],
                 connect: Callable[..., socket.socket] = socket.create_connection,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.address = parse_target(target)
        self.host = host
        self.say = say
        self.connect = connect
        self.clock = clock
        self.queue: collections.deque[tuple[float, str, str]] = collections.deque()
        self.size = 0
        self.dropped = 0
        self.partial: dict[str, bytes] = {}
        self.core_pid = ""
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.sent = 0
        self.sending = False  # a batch is on its way

    def start(self) -> None:
        threading.Thread(target=self._run, name="syslog", daemon=True).start()

    # -- queuing: from any thread, never blocking on the network ---------------------------
    def feed(self, data: bytes, source: str) -> None:
        """Bytes the console showed from ``source`` (init, core): whole lines are queued."""
        now = self.clock()
        with self.lock:
            pending = self.partial.get(source, b"") + data
            *lines, rest = pending.split(b"\n")
            if len(rest) > MAX_LINE:
                lines.append(rest)
                rest = b""
            self.partial[source] = rest
            for line in lines:
                text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
                self.queue.append((now, source, text))
                self.size += len(text)
            self._bound()
            if lines:
                self.ready.notify()

    def flush(self, seconds: float) -> bool:
        """At the way out: wait at most ``seconds`` for the queue to be sent; whether it was."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            with self.lock:
                if not self.queue and not self.sending:
                    return True
            time.sleep(0.05)
        return False

    # -- sending: the thread -----------------------------------------------------------------
    def _take(self) -> tuple[list[tuple[float, str, str]], int]:
        with self.lock:
            while not self.queue and not self.dropped:
                self.ready.wait()
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), 200))]
            self.sending = True
            self.size -= sum(len(b[2]) for b in batch)
            dropped, self.dropped = self.dropped, 0
        return batch, dropped

    def _put_back(self, batch: list[tuple[float, str, str]], dropped: int) -> None:
        with self.lock:
            self.queue.extendleft(reversed(batch))
            self.size += sum(len(b[2]) for b in batch)
            self.dropped += dropped
            self._bound()

    def _bound(self) -> None:
        """The oldest lines go (counted) until the queue is within its bounds; under the lock."""
        while self.queue and (len(self.queue) > MAX_LINES or self.size > MAX_BYTES):
            self.size -= len(self.queue.popleft()[2])
            self.dropped += 1

    def _run(self) -> None:
        conn: socket.socket | None = None
        delay, away = RETRY_FIRST, ""
        while True:
            batch, dropped = self._take()
            try:
                if conn is None:
                    conn = self.connect(self.address, timeout=CONNECT_TIMEOUT)
                    conn.settimeout(SEND_TIMEOUT)
                    if away:
                        self.say(f"syslog: {self.target} reached again")
                    away, delay = "", RETRY_FIRST
                data = b""
                if dropped:
                    data += frame(self.clock(), self.host, "init", "1",
                                  f"init: syslog: {dropped} lines were dropped while {self.target} was away")
                data += b"".join(frame(t, self.host, source, "1" if source == "init" else self.core_pid, text)
                                 for t, source, text in batch)
                conn.sendall(data)
                self.sent += len(batch)
                self.sending = False
            except Exception as e:  # noqa: BLE001 - the receiver's failures never end the thread
                self._put_back(batch, dropped)
                self.sending = False
                if conn is not None:
                    conn.close()
                    conn = None
                why = f"{type(e).__name__}: {e}"[:200]
                if not away:
                    self.say(f"syslog: {self.target} unreachable ({why}): keeping the newest {MAX_LINES} lines "
                             "until it is back")
                away = why
                time.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
