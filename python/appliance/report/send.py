"""One bounded exchange with the tracker: POST an envelope, read at most a little of the
answer, all within a deadline (a tracker that drips its answer a byte at a time is cut
off by the alarm, not by a per-read timeout)."""

from __future__ import annotations

import http.client
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple
from urllib.parse import urlsplit

DEADLINE = 30.0  # seconds for one whole exchange: connect, TLS, send, answer
MAX_ANSWER = 16 * 1024  # bytes of the answer's body read (a tracker answers {"id": ...})


class Answer(NamedTuple):
    status: int  # the HTTP status; 0: no answer (the error says why)
    error: str = ""
    retry_after: str = ""  # the Retry-After header
    rate_limits: str = ""  # the X-Sentry-Rate-Limits header
    body: str = ""  # the answer's first bytes, for what is said

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Deadline(Exception):
    pass


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise Deadline(f"no whole answer within {seconds:g} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def post(url: str, headers: dict[str, str], body: bytes, ca_file: str | None = None,
         seconds: float = DEADLINE) -> Answer:
    """POST ``body``; the tracker's answer, or why there was none. Never raises for what
    the network or the tracker does."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        with deadline(seconds):
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                import ssl  # loads OpenSSL: only a reporter with an https tracker pays for it
                context = ssl.create_default_context(cafile=ca_file)
                conn = http.client.HTTPSConnection(host, port, timeout=seconds, context=context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=seconds)
            try:
                conn.request("POST", path or "/", body, headers)
                response = conn.getresponse()
                data = response.read(MAX_ANSWER)
                return Answer(response.status, "", response.getheader("Retry-After", "")[:200],
                              response.getheader("X-Sentry-Rate-Limits", "")[:1000],
                              data[:512].decode("utf-8", "replace"))
            finally:
                conn.close()
    except Deadline as e:
        return Answer(0, str(e))
    except (OSError, http.client.HTTPException, ValueError) as e:  # ssl.SSLError is an OSError
        if isinstance(e, socket.timeout):
            return Answer(0, f"timed out after {seconds:g} s")
        return Answer(0, f"{type(e).__name__}: {e}"[:300])
